// Small helpers of the web app's pages: building DOM safely and wedding-local times.

/**
 * An element with attributes and children. Text is always set as text, never parsed
 * as HTML, so nothing a user typed can inject markup.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

const partsFormatters = new Map();

function partsFormatter(timeZone) {
  if (!partsFormatters.has(timeZone)) {
    partsFormatters.set(
      timeZone,
      new Intl.DateTimeFormat("en-GB", {
        timeZone,
        hourCycle: "h23",
        year: "numeric",
        month: "2-digit",
        day: "2-digit",
        hour: "2-digit",
        minute: "2-digit",
        second: "2-digit",
      }),
    );
  }
  return partsFormatters.get(timeZone);
}

/** The wall-clock parts of an instant in a time zone: {year, month, day, hour, minute}. */
export function zonedParts(date, timeZone) {
  const parts = {};
  for (const part of partsFormatter(timeZone).formatToParts(date)) {
    if (part.type !== "literal") parts[part.type] = Number(part.value);
  }
  return parts;
}

/** The instant at a wall-clock time of a time zone (the later one in a DST overlap). */
export function zonedToUtc({ year, month, day, hour, minute }, timeZone) {
  const wanted = Date.UTC(year, month - 1, day, hour, minute);
  let guess = wanted;
  // The zone's offset at the guess, twice: once to land near, once to settle across a
  // change of offset.
  for (let i = 0; i < 2; i += 1) {
    const p = zonedParts(new Date(guess), timeZone);
    const asUtc = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second);
    guess = wanted - (asUtc - Math.floor(guess / 1000) * 1000);
  }
  return new Date(guess);
}

/** "14:05" in the wedding's time zone. */
export function clock(value, timeZone) {
  if (!value) return "";
  const p = zonedParts(new Date(value), timeZone);
  return `${String(p.hour).padStart(2, "0")}:${String(p.minute).padStart(2, "0")}`;
}

/** The value of an <input type="time"> for an instant, in the wedding's time zone. */
export function timeInputValue(value, timeZone) {
  return value ? clock(value, timeZone) : "";
}

/** An ISO instant (UTC, "Z") for a wedding-local date of `base` at "HH:MM". */
export function isoAtLocalTime(base, hhmm, timeZone) {
  const [hour, minute] = hhmm.split(":").map(Number);
  const day = zonedParts(new Date(base), timeZone);
  return zonedToUtc({ ...day, hour, minute }, timeZone).toISOString();
}

/** "in 12 min", "in 2 h 5 min", "now". */
export function relative(ms) {
  const minutes = Math.round(ms / 60000);
  if (minutes <= 0) return "now";
  if (minutes < 60) return `in ${minutes} min`;
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? `in ${hours} h ${rest} min` : `in ${hours} h`;
}

/** A value kept in the browser, or null (storage can be switched off or full). */
export function recall(key) {
  try {
    return localStorage.getItem(key);
  } catch (err) {
    return null;
  }
}

/** Keep a value in the browser when it can; losing it only costs a hint. */
export function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (err) {
    // private mode or full storage
  }
}

// What the connection indicator says in each state of the realtime client.
export const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  unauthorized: "Signed out",
  closed: "Disconnected",
};
