#!/usr/bin/env bash
# Makes the two base images the Dockerfile names, locally, from Debian's packages, for
# machines that cannot pull images (this project's CI). Elsewhere the Dockerfile pulls
# the upstream images and this script is not needed.
#   docker.io/library/rust:1.95-slim-bookworm   Debian bookworm (debootstrap minbase, gcc,
#                                               libc6-dev) with this machine's Rust toolchain
#   gcr.io/distroless/cc-debian12:nonroot       glibc, libgcc, CA certificates and the
#                                               nonroot user (65532), no shell, as distroless
#   docker.io/library/redis:7.0                 Debian's redis-server 7.0 on bookworm (the
#                                               dev overlay's Redis; the image test's)
# Each is made once; SEED_FORCE=1 remakes them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-podman.sh

rust_image=docker.io/library/rust:1.95-slim-bookworm
runtime_image=gcr.io/distroless/cc-debian12:nonroot
redis_image=docker.io/library/redis:7.0
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=${SEED_DIR:-/var/tmp/push-seed}

have() { [ -z "${SEED_FORCE:-}" ] && podman image exists "$1"; }
if have "$rust_image" && have "$runtime_image" && have "$redis_image"; then
  exit 0
fi

# One bookworm root file system serves both images.
base=$work/bookworm
if [ ! -x "$base/usr/bin/gcc" ]; then
  rm -rf "$base"
  mkdir -p "$base"
  echo "debootstrap bookworm into $base" >&2
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,netbase,tzdata bookworm "$base" "$mirror" >/dev/null
fi

if ! have "$rust_image"; then
  # The Rust toolchain this machine builds with (rustc, cargo, the standard library),
  # without its documentation and sources.
  toolchain=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  case $version in 1.95.*) ;; *) echo "warning: tagging Rust $version as $rust_image" >&2 ;; esac
  rm -rf "$base/usr/local/rust"
  mkdir -p "$base/usr/local/rust" "$base/usr/local/cargo"
  tar -C "$toolchain" --exclude='./share/doc' --exclude='./lib/rustlib/src' --exclude='./lib/rustlib/rustc-src' -c . |
    tar -C "$base/usr/local/rust" -x
  echo "importing $rust_image" >&2
  tar -C "$base" -c . | podman import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'WORKDIR /' - "$rust_image" >/dev/null
fi

if ! have "$runtime_image"; then
  # Only the files of the packages distroless's cc image holds, and its users.
  rt=$work/distroless
  rm -rf "$rt"
  mkdir -p "$rt"
  # /lib, /lib64, /bin and /sbin are symlinks into /usr on bookworm: first those.
  for l in lib lib64 bin sbin; do
    if [ -L "$base/$l" ]; then
      mkdir -p "$rt/usr/$l"
      cp -a "$base/$l" "$rt/$l"
    fi
  done
  for p in base-files libc6 libgcc-s1 ca-certificates netbase tzdata; do
    chroot "$base" dpkg -L "$p" | while read -r f; do
      if [ -f "$base$f" ] || [ -L "$base$f" ]; then
        mkdir -p "$rt$(dirname "$f")"
        cp -a "$base$f" "$rt$f"
      fi
    done
  done
  cp -a "$base/etc/ssl/certs/ca-certificates.crt" "$rt/etc/ssl/certs/" 2>/dev/null || true
  mkdir -p "$rt/tmp" "$rt/home/nonroot" "$rt/etc"
  chmod 1777 "$rt/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rt/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$rt/etc/group"
  chown 65532:65532 "$rt/home/nonroot"
  echo "importing $runtime_image" >&2
  tar -C "$rt" -c . | podman import --change 'USER 65532' --change 'WORKDIR /home/nonroot' - "$runtime_image" >/dev/null
fi
if ! have "$redis_image"; then
  # Debian's redis-server on the same base, for the image test and podman kube play.
  rr=$work/redis
  rm -rf "$rr"
  cp -a "$base" "$rr"
  rm -rf "$rr/usr/local/rust"
  cp /etc/resolv.conf "$rr/etc/resolv.conf"
  chroot "$rr" apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  chroot "$rr" apt-get clean
  echo "importing $redis_image" >&2
  tar -C "$rr" -c . | podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]' \
    --change 'WORKDIR /tmp' - "$redis_image" >/dev/null
fi
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'rust|distroless|redis' >&2
