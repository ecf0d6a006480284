// A real push system on loopback for the tests: its own redis-server, presence-svc,
// profile-svc and one or more push-gateway replicas (the debug binaries cargo built),
// each on a free port, with credentials as docs/SECURITY.md describes them.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gatewayClient } from "@push/client";
import { signHs256 } from "./jwt.js";
import { eventually, sleep } from "./wait.js";

const here = dirname(fileURLToPath(import.meta.url));
/** The repository's root (web/e2e/dist/src → four levels up). */
export const REPO = resolve(here, "../../../..");
/** Where service logs go (git-ignored), one file per process start. */
export const ARTIFACTS = resolve(here, "../../artifacts");

/** Where the service binaries are: $PUSH_BIN_DIR, else $CARGO_TARGET_DIR/debug, else target/debug. */
export function binDir(): string {
  if (process.env.PUSH_BIN_DIR) return process.env.PUSH_BIN_DIR;
  return join(process.env.CARGO_TARGET_DIR ? resolve(REPO, process.env.CARGO_TARGET_DIR) : join(REPO, "target"), "debug");
}

/** A port nothing listens on now (loopback). */
export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => ok(port));
    });
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function listening(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      ok(true);
    });
    s.once("error", () => ok(false));
  });
}

/** Whether the Redis on `port` answers PING. */
function redisPong(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1");
    s.setTimeout(1000, () => {
      s.destroy();
      ok(false);
    });
    s.once("connect", () => s.write("PING\r\n"));
    s.once("data", (d) => {
      s.destroy();
      ok(d.toString().startsWith("+PONG"));
    });
    s.once("error", () => ok(false));
  });
}

let logSeq = 0;
const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** One process of the system, restartable with the same command line. */
export class Proc {
  child?: ChildProcess;
  exited?: Promise<void>;
  constructor(
    readonly name: string,
    readonly cmd: string,
    readonly args: string[],
    readonly env: Record<string, string> = {},
  ) {}

  start(): void {
    mkdirSync(ARTIFACTS, { recursive: true });
    const log = createWriteStream(join(ARTIFACTS, `${String(++logSeq).padStart(3, "0")}-${this.name}.log`));
    const child = spawn(this.cmd, this.args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info", ...this.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    children.add(child);
    this.child = child;
    this.exited = new Promise((ok) =>
      child.once("exit", () => {
        children.delete(child);
        ok();
      }),
    );
  }

  /** Ends the process (SIGKILL: as a crash; SIGTERM: a graceful stop) and waits for it. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(killer);
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }
}

/** A gateway replica: its gRPC(-Web) port and its console port. */
export class Gateway extends Proc {
  constructor(
    name: string,
    cmd: string,
    args: string[],
    env: Record<string, string>,
    readonly port: number,
    readonly consolePort: number,
  ) {
    super(name, cmd, args, env);
  }
  /** gRPC-Web base URL. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  /** The operator console. */
  get consoleUrl(): string {
    return `http://127.0.0.1:${this.consolePort}`;
  }
}

/** Options of `System.start`. */
export interface SystemOptions {
  /** Gateway replicas (default 1). */
  gateways?: number;
  /** Origins allowed to call the gateways from a browser (`--cors-allow-origin`). */
  corsOrigins?: string[];
  /** More gateway flags. */
  gatewayArgs?: string[];
}

/** The HS256 secret of device-token key `hs1`. */
const HS_SECRET = "an-hmac-secret-of-at-least-32-bytes!!";

/** The running system and its credentials. */
export class System {
  /** An API key with the admin scope. */
  readonly adminKey = `adm-${randomBytes(16).toString("hex")}`;
  /** An API key with the publish scope only. */
  readonly publishKey = `pub-${randomBytes(16).toString("hex")}`;
  /** An API key with the groups scope only. */
  readonly groupsKey = `grp-${randomBytes(16).toString("hex")}`;
  readonly gateways: Gateway[] = [];
  private readonly procs: Proc[] = [];

  private constructor(readonly dir: string) {}

  /** Starts Redis, the internal services and the gateways, and waits until every gateway answers. */
  static async start(options: SystemOptions = {}): Promise<System> {
    const dir = mkdtempSync(join(tmpdir(), "push-web-e2e-"));
    const sys = new System(dir);
    try {
      await sys.boot(options);
    } catch (err) {
      await sys.stop();
      throw err;
    }
    return sys;
  }

  private async boot(options: SystemOptions): Promise<void> {
    const bin = binDir();
    const file = (name: string, text: string) => {
      const p = join(this.dir, name);
      writeFileSync(p, text, { mode: 0o600 });
      return p;
    };
    const internal = file("internal.token", `internal-${randomBytes(12).toString("hex")}`);
    const hs1 = file("hs1.secret", HS_SECRET);
    const digest = (k: string) => createHash("sha256").update(k).digest("hex");

    const redisPort = await freePort();
    const redisDir = join(this.dir, "redis");
    mkdirSync(redisDir);
    const redis = new Proc("redis", "redis-server", [
      "--bind", "127.0.0.1", "--port", String(redisPort), "--dir", redisDir,
      "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
      "--client-output-buffer-limit", "pubsub 256mb 64mb 60",
    ]);
    this.procs.push(redis);
    redis.start();
    await eventually("redis-server", () => redisPong(redisPort), 20_000);
    const redisUrl = `redis://127.0.0.1:${redisPort}`;

    const presencePort = await freePort();
    const profilePort = await freePort();
    const common = ["--redis-url", redisUrl, "--internal-token-file", internal, "--drain-delay", "0s", "--shutdown-grace", "2s"];
    const presence = new Proc("presence-svc", join(bin, "presence-svc"), [
      "--listen", `127.0.0.1:${presencePort}`, ...common, "--min-ttl", "1s",
    ]);
    const profile = new Proc("profile-svc", join(bin, "profile-svc"), ["--listen", `127.0.0.1:${profilePort}`, ...common]);
    this.procs.push(presence, profile);
    presence.start();
    profile.start();
    await eventually("presence-svc", () => presence.running && listening(presencePort), 30_000);
    await eventually("profile-svc", () => profile.running && listening(profilePort), 30_000);

    const n = options.gateways ?? 1;
    for (let i = 0; i < n; i++) {
      const port = await freePort();
      const consolePort = await freePort();
      const args = [
        "--listen", `127.0.0.1:${port}`,
        "--console-listen", `127.0.0.1:${consolePort}`,
        "--presence-url", `http://127.0.0.1:${presencePort}`,
        "--profile-url", `http://127.0.0.1:${profilePort}`,
        ...common,
        "--stream-drain-window", "1s",
        "--api-key", `ops:${digest(this.adminKey)}:admin`,
        "--api-key", `pusher:${digest(this.publishKey)}:publish`,
        "--api-key", `grouper:${digest(this.groupsKey)}:groups`,
        "--jwt-key", `hs1:HS256:${hs1}`,
        "--jwt-audience", "push",
        "--jwt-issuer", "auth.example",
        ...(options.corsOrigins?.length ? ["--cors-allow-origin", options.corsOrigins.join(",")] : []),
        ...(options.gatewayArgs ?? []),
      ];
      const gw = new Gateway(`push-gateway-${i}`, join(bin, "push-gateway"), args, {}, port, consolePort);
      this.gateways.push(gw);
      this.procs.push(gw);
      gw.start();
    }
    for (const gw of this.gateways) await this.ready(gw);
  }

  /** Waits until `gw` answers an API call (so it reached Redis and presence-svc). */
  async ready(gw: Gateway): Promise<void> {
    const client = gatewayClient({ baseUrl: gw.url, credential: this.adminKey });
    await eventually(
      `${gw.name} on ${gw.url}`,
      async () => {
        if (!gw.running) throw new Error(`${gw.name} exited; see ${ARTIFACTS}`);
        await client.countOnlineUsers({}, { timeoutMs: 2000 });
        return true;
      },
      60_000,
    );
  }

  /** Kills a gateway as a crash would (SIGKILL). */
  async crash(gw: Gateway): Promise<void> {
    await gw.stop("SIGKILL");
  }

  /** Starts a stopped gateway again on the same ports and waits until it answers. */
  async restart(gw: Gateway): Promise<void> {
    gw.start();
    await this.ready(gw);
  }

  /** A backend's client of gateway `i`, with an API key (admin by default). */
  backend(key = this.adminKey, i = 0) {
    return gatewayClient({ baseUrl: this.gateways[i]!.url, credential: key });
  }

  /**
   * A device token for `user` (key hs1), valid for `ttlSeconds`; each one new (a `jti`),
   * as an auth service mints them.
   */
  deviceToken(user: string, ttlSeconds = 600): string {
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: user, iat: now, exp: now + ttlSeconds, aud: "push", iss: "auth.example", jti: randomBytes(8).toString("hex") };
    return signHs256(claims, HS_SECRET, "hs1");
  }

  /** A token signed with a key the gateway does not know (always UNAUTHENTICATED); each one new. */
  forgedToken(user: string): string {
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: user, iat: now, exp: now + 600, aud: "push", iss: "auth.example", jti: randomBytes(8).toString("hex") };
    return signHs256(claims, "not-the-secret-not-the-secret-0000", "hs1");
  }

  /** Stops everything (gateways first, Redis last) and removes the temporary files. */
  async stop(): Promise<void> {
    for (const p of [...this.procs].reverse()) await p.stop("SIGTERM");
    await sleep(0);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
