/* Live log viewer for the admin run page. Plain JavaScript, no build step.

   The page renders the tail of the log in <pre class="ff-log-body"> (all a browser without
   JavaScript gets) and the byte offset where that tail ends. This script:
   1. turns the rendered lines into styled ones (stderr red, Fast-Flow's own lines distinct);
   2. follows ws/runs/<id>/logs/?offset=<end> (runs/consumers.py): {"type": "log", "offset",
      "data"} messages carry whole lines, `offset` being the byte offset just past `data`;
      after a drop it reconnects with the last offset, so nothing is missed or repeated;
   3. keeps the view at the bottom while the user is there, and stops when they scroll up
      (a button brings them back);
   4. searches: highlights matches, optionally hides other lines, Enter jumps to the next;
   5. updates the status badge and swaps Cancel for Retry: from the websocket's final
      {"type": "status"} message, and from status.json polled every few seconds (which
      also moves the badge from queued to running).
*/
(function () {
  "use strict";

  var FINAL = ["succeeded", "failed", "cancelled"];
  var MAX_LINES = 20000; // older lines leave the page (the download has them all)
  var POLL_MS = 3000;
  var LINE = /^(\S+) (out|err|sys) ([\s\S]*)$/;

  function make(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function shortStamp(ts) {
    var m = /T(\d\d:\d\d:\d\d(?:\.\d{3})?)/.exec(ts);
    return m ? m[1] : ts;
  }

  function Viewer(root) {
    this.root = root;
    this.body = root.querySelector(".ff-log-body");
    this.offset = parseInt(root.dataset.offset || "0", 10);
    this.status = root.dataset.status;
    this.colours = JSON.parse(root.dataset.colours || "{}");
    this.done = FINAL.indexOf(this.status) !== -1;
    this.follow = true;
    this.carry = "";
    this.queue = [];
    this.unseen = 0;
    this.trimmed = 0;
    this.retries = 0;
    this.query = "";
    this.current = null;
    this.buildBar();
    var rendered = this.body.textContent;
    this.body.textContent = "";
    this.append(rendered + (this.done && rendered && !/\n$/.test(rendered) ? "\n" : ""));
    this.body.scrollTop = this.body.scrollHeight;
    this.body.addEventListener("scroll", this.onScroll.bind(this));
    if (this.done) {
      this.setState("finished", "finished");
    } else {
      this.connect();
      this.poll();
    }
  }

  Viewer.prototype.buildBar = function () {
    var bar = make("div", "ff-log-bar");
    this.search = make("input", "ff-log-search");
    this.search.type = "search";
    this.search.placeholder = "Search the log (Enter: next match)";
    this.search.setAttribute("aria-label", "Search the log");
    var only = make("label");
    this.onlyBox = make("input");
    this.onlyBox.type = "checkbox";
    only.appendChild(this.onlyBox);
    only.appendChild(document.createTextNode(" only matching lines"));
    var stamps = make("label");
    var stampBox = make("input");
    stampBox.type = "checkbox";
    stampBox.checked = true;
    stamps.appendChild(stampBox);
    stamps.appendChild(document.createTextNode(" timestamps"));
    this.count = make("span", "ff-log-count");
    this.state = make("span", "ff-log-state");
    [this.search, only, stamps, this.count, this.state].forEach(function (n) { bar.appendChild(n); });
    this.root.insertBefore(bar, this.root.firstChild);

    this.trimNote = make("p", "ff-log-trimmed");
    this.trimNote.hidden = true;
    this.root.insertBefore(this.trimNote, this.body);
    this.jump = make("button", "button ff-log-jump", "↓ follow the log");
    this.jump.type = "button";
    this.jump.hidden = true;
    this.root.appendChild(this.jump);

    var self = this;
    var timer = null;
    this.search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { self.applySearch(); }, 150);
    });
    this.search.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") {
        ev.preventDefault(); // never submit the admin form
        clearTimeout(timer);
        if (self.search.value !== self.query) self.applySearch();
        self.nextMatch(ev.shiftKey ? -1 : 1);
      }
    });
    this.onlyBox.addEventListener("change", function () {
      self.root.classList.toggle("ff-only-matches", self.onlyBox.checked && !!self.query);
    });
    stampBox.addEventListener("change", function () {
      self.root.classList.toggle("ff-no-stamps", !stampBox.checked);
    });
    this.jump.addEventListener("click", function () {
      self.setFollow(true);
      self.body.scrollTop = self.body.scrollHeight;
    });
  };

  // --- lines ------------------------------------------------------------------------------
  Viewer.prototype.enqueue = function (text) {
    this.queue.push(text);
    if (this.queue.length === 1) {
      var self = this;
      var flush = function () {
        var text = self.queue.join("");
        self.queue = [];
        self.append(text);
      };
      if (document.hidden) setTimeout(flush, 250); else window.requestAnimationFrame(flush);
    }
  };

  Viewer.prototype.append = function (text) {
    var parts = (this.carry + text).split("\n");
    this.carry = parts.pop();
    if (!parts.length) return;
    var frag = document.createDocumentFragment();
    for (var i = 0; i < parts.length; i++) frag.appendChild(this.line(parts[i]));
    this.body.appendChild(frag);
    var extra = this.body.childNodes.length - MAX_LINES;
    if (extra > 0) {
      for (var j = 0; j < extra; j++) this.body.removeChild(this.body.firstChild);
      this.trimmed += extra;
      this.trimNote.hidden = false;
      this.trimNote.textContent = this.trimmed + " earlier line(s) are no longer shown here; use “Download log” for all of it.";
    }
    if (this.follow) {
      this.body.scrollTop = this.body.scrollHeight;
    } else {
      this.unseen += parts.length;
      this.jump.textContent = "↓ " + this.unseen + " new line(s): follow the log";
    }
    if (this.query) this.updateCount();
  };

  Viewer.prototype.line = function (raw) {
    var m = LINE.exec(raw);
    var stream = m ? m[2] : "out";
    var node = make("span", "ff-line ff-" + stream);
    node.dataset.stream = stream;
    var ts = make("span", "ff-ts", m ? shortStamp(m[1]) + " " : "");
    if (m) ts.title = m[1];
    node.appendChild(ts);
    node.appendChild(make("span", "ff-text", m ? m[3] : raw));
    node.appendChild(document.createTextNode("\n"));
    node._text = m ? m[3] : raw;
    if (this.query) this.mark(node);
    return node;
  };

  // --- search -----------------------------------------------------------------------------
  Viewer.prototype.applySearch = function () {
    this.query = this.search.value;
    this.current = null;
    var lines = this.body.childNodes;
    for (var i = 0; i < lines.length; i++) this.mark(lines[i]);
    this.root.classList.toggle("ff-only-matches", this.onlyBox.checked && !!this.query);
    this.updateCount();
  };

  Viewer.prototype.mark = function (node) {
    var text = node._text, textNode = node.childNodes[1], query = this.query;
    var hay = text.toLowerCase(), needle = query.toLowerCase();
    if (hay.length !== text.length) { hay = text; needle = query; } // keep indexes true
    var i = query ? hay.indexOf(needle) : -1;
    if (i === -1) {
      if (node._marked) { textNode.textContent = text; node._marked = false; }
      node.classList.remove("ff-match", "ff-current");
      return;
    }
    textNode.textContent = "";
    var pos = 0;
    while (i !== -1) {
      textNode.appendChild(document.createTextNode(text.slice(pos, i)));
      textNode.appendChild(make("mark", "", text.slice(i, i + query.length)));
      pos = i + query.length;
      i = hay.indexOf(needle, pos);
    }
    textNode.appendChild(document.createTextNode(text.slice(pos)));
    node._marked = true;
    node.classList.add("ff-match");
  };

  Viewer.prototype.updateCount = function () {
    var n = this.query ? this.body.querySelectorAll(".ff-match").length : 0;
    this.count.textContent = this.query ? n + " matching line" + (n === 1 ? "" : "s") : "";
  };

  Viewer.prototype.nextMatch = function (step) {
    var matches = Array.prototype.slice.call(this.body.querySelectorAll(".ff-match"));
    if (!matches.length) return;
    var at = matches.indexOf(this.current);
    var next = matches[(at + step + matches.length) % matches.length];
    if (this.current) this.current.classList.remove("ff-current");
    next.classList.add("ff-current");
    this.current = next;
    this.setFollow(false);
    var top = next.offsetTop - this.body.offsetTop - this.body.clientHeight / 2;
    this.body.scrollTop = Math.max(0, top);
  };

  // --- scrolling --------------------------------------------------------------------------
  Viewer.prototype.onScroll = function () {
    var atBottom = this.body.scrollHeight - this.body.scrollTop - this.body.clientHeight < 24;
    if (atBottom !== this.follow) this.setFollow(atBottom);
  };

  Viewer.prototype.setFollow = function (on) {
    this.follow = on;
    this.jump.hidden = on;
    if (on) {
      this.unseen = 0;
      this.jump.textContent = "↓ follow the log";
    }
  };

  // --- the websocket and the status -----------------------------------------------------------
  Viewer.prototype.connect = function () {
    var self = this;
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + this.root.dataset.ws
      + "?offset=" + this.offset;
    var socket = new WebSocket(url);
    this.socket = socket;
    this.setState("connecting", "connecting…");
    socket.onopen = function () {
      self.retries = 0;
      self.setState("live", "live");
    };
    socket.onmessage = function (ev) {
      var msg = JSON.parse(ev.data);
      if (msg.type === "log" && msg.offset > self.offset) {
        self.offset = msg.offset;
        self.enqueue(msg.data);
      } else if (msg.type === "status") {
        self.finish(msg.status);
        socket.close(1000); // the status is the last message
      }
    };
    socket.onclose = function () {
      if (self.done) return;
      self.retries += 1;
      var wait = Math.min(10000, 500 * Math.pow(2, self.retries));
      self.setState("lost", "connection lost; retrying in " + Math.round(wait / 1000) + " s");
      setTimeout(function () { if (!self.done) self.connect(); }, wait);
    };
  };

  Viewer.prototype.finish = function (status) {
    this.done = true;
    if (this.carry) this.enqueue("\n"); // a last line without a newline
    this.setState("finished", "finished");
    this.showStatus({status: status, label: status, final: true});
    this.fetchStatus().catch(function () {}); // the reason ("failed / exit_code") comes from status.json
  };

  Viewer.prototype.poll = function () {
    var self = this;
    if (this.done) return;
    setTimeout(function () {
      if (self.done) return;
      self.fetchStatus().then(function () { self.poll(); }, function () { self.poll(); });
    }, POLL_MS);
  };

  Viewer.prototype.fetchStatus = function () {
    var self = this;
    return fetch(this.root.dataset.statusUrl, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        // A poll may see "final" before the socket has delivered the last lines: the
        // badge changes now, the socket still drains and then ends the log.
        if (s) self.showStatus(s);
        if (s && s.final && self.done && s.message) self.setState("finished", "finished: " + s.message);
      });
  };

  Viewer.prototype.showStatus = function (s) {
    this.status = s.status;
    this.root.dataset.status = s.status;
    var badges = document.querySelectorAll(".ff-status");
    for (var i = 0; i < badges.length; i++) {
      badges[i].dataset.status = s.status;
      badges[i].textContent = s.label || s.status;
      if (this.colours[s.status]) badges[i].style.background = this.colours[s.status];
    }
    var final = FINAL.indexOf(s.status) !== -1;
    document.querySelectorAll(".ff-when-active").forEach(function (n) { n.hidden = final; });
    document.querySelectorAll(".ff-when-final").forEach(function (n) { n.hidden = !final; });
  };

  Viewer.prototype.setState = function (state, text) {
    this.state.dataset.state = state;
    this.state.textContent = text;
  };

  function start() {
    var roots = document.querySelectorAll(".ff-log[data-ws]");
    for (var i = 0; i < roots.length; i++) roots[i].ffViewer = new Viewer(roots[i]);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
