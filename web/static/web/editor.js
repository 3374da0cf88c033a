// The planner's controls on the wedding page: add an item, edit or delete one, shift the
// day from an item, mark key moments. The page shows them only to those the role matrix
// lets edit the timeline (`viewer.can_edit`); the server refuses anyone else's publish.
//
// Edits are optimistic: the update names the version the planner opened. When someone
// else changed the item first, the server answers `conflict` with the item as it is
// now; the dialog then shows it beside the planner's own changes, which can be saved
// on top of the current version or dropped. A delete names the version too: an item
// someone changed meanwhile is not deleted, and the dialog shows it as it is now.

import { clock, isoAtLocalTime, timeInputValue, zonedParts, zonedToUtc } from "./util.js";

const $ = (selector) => document.querySelector(selector);
const MAX_SHIFT_MINUTES = 1440;

export function signedMinutes(minutes) {
  return `${Math.abs(minutes)} min ${minutes > 0 ? "later" : "earlier"}`;
}

function describe(item, timeZone) {
  const end = item.ends_at ? `–${clock(item.ends_at, timeZone)}` : "";
  const where = item.location ? `, ${item.location}` : "";
  return `${item.title}, ${clock(item.starts_at, timeZone)}${end}${where} (version ${item.version})`;
}

export class ItemEditor {
  /** `page` gives: items, tz, connection, publish(), toast(), renderTimeline(). */
  constructor(page) {
    this.page = page;
    this.editing = null;
    this.dialog = $("#item-dialog");
    this.form = $("#item-form");
    if (!this.dialog) return;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.editing.id === null) this.create();
      else this.save(this.editing.version, this.changes());
    });
    $("#conflict-retry").addEventListener("click", () => {
      this.save(this.editing.current.version, this.changes());
    });
    $("#conflict-discard").addEventListener("click", () => this.dialog.close());
    $("#shift-later").addEventListener("click", () => this.shift(1));
    $("#shift-earlier").addEventListener("click", () => this.shift(-1));
    $("#delete-item").addEventListener("click", () => {
      $("#delete-confirm").hidden = false;
      $("#delete-yes").focus();
    });
    $("#delete-no").addEventListener("click", () => {
      $("#delete-confirm").hidden = true;
    });
    $("#delete-yes").addEventListener("click", () => this.remove());
    const add = $("#add-item");
    if (add) add.addEventListener("click", () => this.openNew());
    this.dialog.addEventListener("close", () => {
      this.editing = null;
    });
  }

  /** Noon of the wedding's day in its zone: the day a new item's times fall on. */
  weddingDay() {
    const [year, month, day] = this.page.wedding.date.split("-").map(Number);
    return zonedToUtc({ year, month, day, hour: 12, minute: 0 }, this.page.tz).toISOString();
  }

  /** The start a new item is offered: the next five-minute mark on the day, else the
   * ceremony's time. */
  defaultStart() {
    const base = this.weddingDay();
    const now = zonedParts(new Date(), this.page.tz);
    const today = zonedParts(new Date(base), this.page.tz);
    if (now.year === today.year && now.month === today.month && now.day === today.day) {
      const minutes = Math.min(now.hour * 60 + now.minute + 5 - (now.minute % 5), 23 * 60 + 55);
      const two = (n) => String(n).padStart(2, "0");
      const hhmm = `${two(Math.floor(minutes / 60))}:${two(minutes % 60)}`;
      return isoAtLocalTime(base, hhmm, this.page.tz);
    }
    return isoAtLocalTime(base, this.page.wedding.ceremony_time, this.page.tz);
  }

  /** Open the dialog on a new item (`timeline.item.created`). */
  openNew() {
    const original = {
      title: "",
      starts_at: this.defaultStart(),
      ends_at: null,
      location: "",
      status: "planned",
      key_moment: false,
      pinned: false,
    };
    this.editing = { id: null, version: null, original, current: null };
    this.fill(original);
    this.mode(true);
    $("#item-dialog-title").textContent = "New item";
    this.busy(false);
    if (!this.dialog.open) this.dialog.showModal();
    this.form.elements.title.focus();
  }

  /** Show the controls of a new item (no shift, no delete) or of an existing one. */
  mode(creating) {
    this.dialog.dataset.mode = creating ? "create" : "edit";
    this.form.querySelector("fieldset.shift").hidden = creating;
    $("#delete-item").hidden = creating;
    $("#delete-confirm").hidden = true;
    $("#conflict").hidden = true;
    $("#item-error").hidden = true;
  }

  toggleKeyMoment(itemId) {
    const item = this.page.items.get(itemId);
    if (!item) return;
    const payload = { id: item.id, version: item.version, key_moment: !item.key_moment };
    this.page
      .publish("timeline.item.updated", payload, { label: "the key moment" })
      .catch((err) =>
        this.page.toast(
          err.code === "conflict"
            ? "That item changed meanwhile: try again."
            : `Not saved: ${err.message}`,
        ),
      );
  }

  /** Open the dialog on an item; with `conflict`, show it beside the planner's changes. */
  open(itemId, { conflict = null, changes = null, base = null } = {}) {
    const item = this.page.items.get(itemId);
    if (!item && !conflict) return;
    const original = base || { ...item };
    this.editing = { id: itemId, version: original.version, original, current: conflict };
    // The form shows what the planner is saving: the item as they opened it, plus their
    // changes when a conflict brings the dialog back.
    this.fill({ ...original, ...(changes || {}) });
    this.mode(false);
    $("#item-dialog-title").textContent = `Edit “${original.title}”`;
    $("#conflict").hidden = !conflict;
    if (conflict) $("#conflict-current").textContent = describe(conflict, this.page.tz);
    this.busy(false);
    if (!this.dialog.open) this.dialog.showModal();
  }

  fill(values) {
    const f = this.form.elements;
    const tz = this.page.tz;
    f.title.value = values.title;
    f.start.value = timeInputValue(values.starts_at, tz);
    f.end.value = timeInputValue(values.ends_at, tz);
    f.location.value = values.location;
    f.status.value = values.status;
    f.key_moment.checked = values.key_moment;
    f.pinned.checked = values.pinned;
  }

  /** What the planner changed, as the fields of a `timeline.item.updated` payload. */
  changes() {
    const f = this.form.elements;
    const tz = this.page.tz;
    const base = this.editing.original;
    const changes = {};
    const title = f.title.value.trim();
    if (title !== base.title) changes.title = title;
    if (f.start.value && f.start.value !== timeInputValue(base.starts_at, tz)) {
      changes.starts_at = isoAtLocalTime(base.starts_at, f.start.value, tz);
    }
    if (f.end.value !== timeInputValue(base.ends_at, tz)) {
      // An end time stays on the day of the item's end (or its start, when it had none).
      changes.ends_at = f.end.value
        ? isoAtLocalTime(base.ends_at || base.starts_at, f.end.value, tz)
        : null;
    }
    const location = f.location.value.trim();
    if (location !== base.location) changes.location = location;
    if (f.status.value !== base.status) changes.status = f.status.value;
    if (f.key_moment.checked !== base.key_moment) changes.key_moment = f.key_moment.checked;
    if (f.pinned.checked !== base.pinned) changes.pinned = f.pinned.checked;
    return changes;
  }

  busy(busy) {
    for (const button of this.dialog.querySelectorAll("button")) button.disabled = busy;
  }

  error(text) {
    const el = $("#item-error");
    el.textContent = text;
    el.hidden = false;
  }

  /** The new item as the form describes it: a `timeline.item.created` payload. */
  created() {
    const f = this.form.elements;
    const tz = this.page.tz;
    const day = this.weddingDay();
    const payload = {
      title: f.title.value.trim(),
      starts_at: isoAtLocalTime(day, f.start.value, tz),
      location: f.location.value.trim(),
      status: f.status.value,
      key_moment: f.key_moment.checked,
      pinned: f.pinned.checked,
    };
    if (f.end.value) payload.ends_at = isoAtLocalTime(day, f.end.value, tz);
    return payload;
  }

  create() {
    const payload = this.created();
    if (!payload.title) {
      this.error("Give the item a title.");
      return;
    }
    const queued = this.page.connection !== "live";
    this.busy(!queued);
    const sent = this.page.publish("timeline.item.created", payload, { label: "the new item" });
    if (queued) this.dialog.close();
    sent
      .then(() => {
        if (this.editing && this.editing.id === null) this.dialog.close();
        this.page.toast(`Added “${payload.title}”.`);
      })
      .catch((err) => {
        this.busy(false);
        this.error(err.message);
        if (!this.dialog.open) this.page.toast(`Not added: ${err.message}`);
      });
  }

  /** Delete the item being edited, at the version the planner opened. */
  remove() {
    const { id, version, original } = this.editing;
    const queued = this.page.connection !== "live";
    this.busy(!queued);
    const sent = this.page.publish(
      "timeline.item.deleted",
      { id, version },
      { label: "the deletion" },
    );
    if (queued) this.dialog.close();
    sent
      .then(() => {
        if (this.editing && this.editing.id === id) this.dialog.close();
        this.page.toast(`Deleted “${original.title}”.`);
      })
      .catch((err) => {
        if (err.code === "conflict" && err.reply && err.reply.current) {
          // Changed meanwhile: show it as it is now, for the planner to decide again.
          const current = err.reply.current;
          const known = this.page.items.get(current.id);
          if (!known || known.version < current.version) this.page.items.set(current.id, current);
          this.page.renderTimeline();
          this.open(id, { base: current });
          this.error("Someone changed this item meanwhile, so it was not deleted: check it.");
          return;
        }
        this.busy(false);
        $("#delete-confirm").hidden = true;
        this.error(err.message);
        if (!this.dialog.open) this.page.toast(`Not deleted: ${err.message}`);
      });
  }

  save(version, changes) {
    const { id, original } = this.editing;
    if (!Object.keys(changes).length) {
      this.dialog.close();
      return;
    }
    // Offline, the change waits in the outbox and the dialog closes; a conflict found
    // when it is sent brings the dialog back.
    const queued = this.page.connection !== "live";
    this.busy(!queued);
    const payload = { id, version, ...changes };
    const sent = this.page.publish("timeline.item.updated", payload, { label: "the change" });
    if (queued) this.dialog.close();
    sent
      .then(() => {
        if (this.editing && this.editing.id === id) this.dialog.close();
        this.page.toast("Saved.");
      })
      .catch((err) => {
        if (err.code === "conflict" && err.reply && err.reply.current) {
          const current = err.reply.current;
          const known = this.page.items.get(current.id);
          if (!known || known.version < current.version) this.page.items.set(current.id, current);
          this.page.renderTimeline();
          this.open(id, { conflict: current, changes, base: original });
          return;
        }
        this.busy(false);
        this.error(err.message);
        if (!this.dialog.open) this.page.toast(`Not saved: ${err.message}`);
      });
  }

  shift(direction) {
    const minutes = Number.parseInt(this.form.elements.minutes.value, 10);
    if (!Number.isInteger(minutes) || minutes < 1 || minutes > MAX_SHIFT_MINUTES) {
      this.error(`Shift by a whole number of minutes, from 1 to ${MAX_SHIFT_MINUTES}.`);
      return;
    }
    const { id } = this.editing;
    this.dialog.close();
    const payload = { from_item_id: id, minutes: direction * minutes };
    this.page
      .publish("timeline.shifted", payload, { label: "the shift" })
      .then(() => this.page.toast(`Timeline moved ${signedMinutes(direction * minutes)}.`))
      .catch((err) => this.page.toast(`Not moved: ${err.message}`));
  }
}
