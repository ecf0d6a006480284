// Debian's chromium, headless, driven by playwright-core (no browser download).
import { chromium, type Browser, type Page } from "playwright-core";
import { eventually } from "./wait.js";

/** The browser binary: $CHROMIUM_PATH, else Debian's. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Launches chromium headless (no sandbox: the tests may run as root, as CI does). */
export function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
}

/** Waits until the element `selector` of `page` has the text `text`. */
export async function textIs(page: Page, selector: string, text: string, timeoutMs = 30_000): Promise<void> {
  await eventually(`${selector} to read ${JSON.stringify(text)}`, async () => (await page.textContent(selector))?.trim() === text, timeoutMs);
}

/** The texts of the test page's messages, in order. */
export function pageMessages(page: Page): Promise<{ id: string; text: string }[]> {
  return page.$$eval("[data-testid=message]", (els) =>
    els.map((el) => ({ id: (el as HTMLElement).dataset.id ?? "", text: el.textContent ?? "" })),
  );
}

/** Waits until the test page shows a message with `text`. */
export async function pageShows(page: Page, text: string, timeoutMs = 30_000): Promise<void> {
  await eventually(`the page to show ${JSON.stringify(text)}`, async () => (await pageMessages(page)).some((m) => m.text === text), timeoutMs);
}
