// The live page (showcase/live.html): volleys of concurrent waits drawn as their answers arrive,
// and the live feed received over SSE and over a WebSocket side by side. Loaded as a file, not
// inline, so the page keeps the project's Content-Security-Policy without a nonce.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ROWS = [
    { key: "sync", path: "/sync/sleep/", label: "WSGI  /sync/sleep/" },
    { key: "async", path: "/async/sleep/", label: "ASGI  /async/sleep/" },
  ];
  // The chart's geometry in viewBox units: the plot runs from LEFT to WIDTH - RIGHT.
  const WIDTH = 960;
  const LEFT = 160;
  const RIGHT = 50;
  const TOP = 8;
  const ROW_GAP = 12;
  const AXIS_HEIGHT = 28;
  const ROW_HEIGHT = 240; // a row's lanes share it; a lane is 3 to 12 units high
  // The feeds keep this many events each, the newest first.
  const FEED_LENGTH = 50;
  // A WebSocket that closes is opened again after this delay, doubled each time up to the cap.
  const RECONNECT_MS = 1000;
  const RECONNECT_MAX_MS = 30000;

  const $ = (selector) => document.querySelector(selector);

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) {
      element.setAttribute(key, String(value));
    }
    if (parent) {
      parent.appendChild(element);
    }
    return element;
  }

  // A round tick step near `span / 5`: 1, 2 or 5 times a power of ten.
  function tickStep(span) {
    const raw = span / 5;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].find((m) => m * power >= raw);
    return step * power;
  }

  // --- The chart ------------------------------------------------------------------------------

  class Chart {
    constructor(element) {
      this.element = element;
      this.title = element.querySelector("title");
    }

    // Lay out an empty chart for a volley of `count` requests per row waiting `ms` each.
    reset(count, ms) {
      this.count = count;
      this.ms = ms;
      this.lane = Math.max(3, Math.min(12, Math.floor(ROW_HEIGHT / count)));
      this.rowHeight = this.lane * count + 8;
      this.domain = Math.max(100, ms * 2);
      this.marks = [];
      this.arrived = {};
      this.rows = {};
      this.element.replaceChildren(this.title);
      const height = TOP + 2 * this.rowHeight + ROW_GAP + AXIS_HEIGHT;
      this.element.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
      this.element.setAttribute("height", String(height));
      ROWS.forEach((row, index) => {
        const y = TOP + index * (this.rowHeight + ROW_GAP);
        this.rows[row.key] = { y, group: null };
        this.arrived[row.key] = 0;
        svg("rect", { class: "row-band", x: LEFT, y, width: WIDTH - LEFT - RIGHT, height: this.rowHeight }, this.element);
        const label = svg("text", { class: "row-label", x: 8, y: y + this.rowHeight / 2 + 4 }, this.element);
        label.textContent = row.label;
      });
      this.axis = svg("g", { class: "axis" }, this.element);
      this.target = svg("g", { class: "target" }, this.element);
      for (const row of ROWS) {
        this.rows[row.key].group = svg("g", { class: "marks", "data-row": row.key }, this.element);
      }
      this.drawScale();
    }

    x(ms) {
      return LEFT + (ms / this.domain) * (WIDTH - LEFT - RIGHT);
    }

    // The time axis and the line at `ms`, the wait itself (the fastest any answer can be).
    drawScale() {
      const bottom = TOP + 2 * this.rowHeight + ROW_GAP;
      this.axis.replaceChildren();
      svg("line", { x1: LEFT, y1: bottom + 4, x2: WIDTH - RIGHT, y2: bottom + 4 }, this.axis);
      const step = tickStep(this.domain);
      for (let t = 0; t <= this.domain; t += step) {
        const x = this.x(t);
        svg("line", { x1: x, y1: bottom + 4, x2: x, y2: bottom + 8 }, this.axis);
        const label = svg("text", { x, y: bottom + 20, "text-anchor": "middle" }, this.axis);
        label.textContent = t === 0 ? "0 ms" : `${t}`;
      }
      this.target.replaceChildren();
      const x = this.x(this.ms);
      svg("line", { x1: x, y1: TOP, x2: x, y2: bottom }, this.target);
    }

    // Draw one answer: a bar from the row's start to `ms`, in the next free lane of its row.
    add(rowKey, ms, result) {
      const lane = this.arrived[rowKey]++;
      const group = svg("g", {
        class: result.ok ? "mark" : "mark failed",
        "data-row": rowKey,
        "data-interface": result.interface,
        "data-status": result.status,
        "data-ms": Math.round(ms),
      }, this.rows[rowKey].group);
      const tip = svg("title", {}, group);
      tip.textContent = `#${lane + 1} answered after ${Math.round(ms)} ms: HTTP ${result.status || "failed"}, `
        + `X-Interface ${result.interface}`;
      const mark = { rowKey, lane, ms, group };
      mark.bar = svg("rect", { height: Math.max(1, this.lane - 1) }, group);
      mark.dot = svg("circle", { r: Math.min(4, this.lane / 2) }, group);
      if (this.lane >= 9) {
        mark.label = svg("text", {}, group);
        mark.label.textContent = result.interface;
      }
      this.marks.push(mark);
      if (ms > this.domain) {
        while (ms > this.domain) {
          this.domain = Math.ceil(this.domain * 1.5);
        }
        this.drawScale();
        this.marks.forEach((each) => this.place(each));
      } else {
        this.place(mark);
      }
    }

    place(mark) {
      const y = this.rows[mark.rowKey].y + 4 + mark.lane * this.lane;
      const x = this.x(mark.ms);
      mark.bar.setAttribute("x", String(LEFT));
      mark.bar.setAttribute("y", String(y));
      mark.bar.setAttribute("width", String(Math.max(1, x - LEFT)));
      mark.dot.setAttribute("cx", String(x));
      mark.dot.setAttribute("cy", String(y + this.lane / 2));
      if (mark.label) {
        mark.label.setAttribute("x", String(x + 6));
        mark.label.setAttribute("y", String(y + this.lane - 2));
      }
    }
  }

  // --- Volleys --------------------------------------------------------------------------------

  function summarize(rowKey, results, count) {
    const row = $(`#summary-${rowKey}`);
    const answered = results.filter((r) => r.ok);
    row.querySelector(".count").textContent = `${answered.length}/${count}`;
    const interfaces = {};
    for (const r of results) {
      interfaces[r.interface] = (interfaces[r.interface] || 0) + 1;
    }
    row.querySelector(".interfaces").textContent = Object.entries(interfaces)
      .map(([name, n]) => `${name}: ${n}`)
      .join(", ") || "–";
    const times = results.map((r) => r.ms).sort((a, b) => a - b);
    row.querySelector(".first").textContent = times.length ? `${Math.round(times[0])} ms` : "–";
    row.querySelector(".last").textContent = times.length ? `${Math.round(times.at(-1))} ms` : "–";
  }

  // Send `count` requests to one row's path at once; draw and list each answer as it arrives.
  async function fireRow(chart, row, count, ms, volley) {
    const results = [];
    summarize(row.key, results, count);
    const start = performance.now();
    const one = async (index) => {
      // A distinct URL per request: the browser never merges two of them into one.
      const url = `${row.path}?ms=${ms}&volley=${volley}&request=${index}`;
      let result;
      try {
        const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
        await response.arrayBuffer();
        result = {
          ok: response.ok,
          status: response.status,
          interface: response.headers.get("X-Interface") || "none",
        };
      } catch {
        result = { ok: false, status: 0, interface: "none" };
      }
      result.ms = performance.now() - start;
      results.push(result);
      chart.add(row.key, result.ms, result);
      summarize(row.key, results, count);
    };
    await Promise.all(Array.from({ length: count }, (_, index) => one(index)));
  }

  function setUpVolleys() {
    const form = $("#volley-form");
    const button = $("#fire");
    const status = $("#volley-status");
    const chart = new Chart($("#chart"));
    let volley = 0;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const count = Number($("#volley-n").value);
      const ms = Number($("#volley-ms").value);
      volley += 1;
      button.disabled = true;
      chart.reset(count, ms);
      try {
        // One row after the other: fired together, the rows would share the browser's few
        // connections to this host, and each would slow the other.
        for (const row of ROWS) {
          status.value = `Firing ${count} × ${row.path}?ms=${ms} …`;
          await fireRow(chart, row, count, ms, volley);
        }
        status.value = `Done: ${2 * count} answers.`;
      } finally {
        button.disabled = false;
      }
    });
  }

  // --- The live feed --------------------------------------------------------------------------

  function clock(date) {
    const pad = (n, width = 2) => String(n).padStart(width, "0");
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.`
      + pad(date.getMilliseconds(), 3);
  }

  class Feed {
    constructor(element) {
      this.list = element.querySelector(".events");
      this.state = element.querySelector(".state");
    }

    setState(state) {
      this.state.dataset.state = state;
      this.state.textContent = state;
    }

    // List one event (the JSON text of a message) with the time it arrived here.
    receive(data) {
      const arrived = new Date();
      let text = data;
      let detail = "";
      try {
        const event = JSON.parse(data);
        if (event && typeof event.text === "string") {
          text = event.text;
          detail = event.source ? ` (${event.source})` : "";
        }
      } catch {
        // Not JSON: listed as it came.
      }
      const item = document.createElement("li");
      const time = document.createElement("time");
      time.dateTime = arrived.toISOString();
      time.textContent = clock(arrived);
      const body = document.createElement("span");
      body.className = "text";
      body.textContent = text;
      const small = document.createElement("small");
      small.textContent = detail;
      item.append(time, body, small);
      this.list.prepend(item);
      while (this.list.children.length > FEED_LENGTH) {
        this.list.lastElementChild.remove();
      }
    }
  }

  function listenSSE(feed) {
    const source = new EventSource("/async/live/");
    source.addEventListener("open", () => feed.setState("open"));
    // EventSource reconnects by itself after a dropped stream; it gives up (CLOSED) only on
    // an answer that is not a stream, such as the 503 /async/live/ gives under WSGI.
    source.addEventListener("error", () => {
      feed.setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    });
    source.addEventListener("message", (event) => feed.receive(event.data));
  }

  function listenWebSocket(feed) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/live/`;
    let delay = RECONNECT_MS;
    const connect = () => {
      const socket = new WebSocket(url);
      socket.addEventListener("open", () => {
        delay = RECONNECT_MS;
        feed.setState("open");
      });
      socket.addEventListener("message", (event) => feed.receive(event.data));
      socket.addEventListener("close", () => {
        feed.setState("reconnecting");
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, RECONNECT_MAX_MS);
      });
    };
    connect();
  }

  function csrfToken() {
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
    return cookie ? decodeURIComponent(cookie.slice("csrftoken=".length)) : "";
  }

  function setUpPublish() {
    const form = $("#publish-form");
    const status = $("#publish-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = $("#publish-text").value;
      status.value = "Publishing …";
      try {
        const response = await fetch("/sync/publish/", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
          body: JSON.stringify({ text }),
        });
        const answer = await response.json().catch(() => ({}));
        const via = response.headers.get("X-Interface") || "?";
        status.value = response.ok
          ? `Published at ${clock(new Date())} through ${via}.`
          : `Refused (HTTP ${response.status}): ${answer.error || response.statusText}`;
      } catch (error) {
        status.value = `Failed: ${error}`;
      }
    });
  }

  setUpVolleys();
  listenSSE(new Feed($("#feed-sse")));
  listenWebSocket(new Feed($("#feed-ws")));
  setUpPublish();
})();
