/* bosh-cm demo chat: a deliberately small Strophe.js client over BOSH or WebSocket.
 *
 * Settings come from (later wins): config.js (written by scripts/run), then the query
 * string: ?transport=bosh|websocket, ?bosh=URL, ?ws=URL, ?jid=JID, ?to=JID, ?as=NAME
 * (fills in one of the demo accounts listed in config.js).
 *
 * BOSH (XEP-0124/0206) uses Strophe's keepalive: a reload re-attaches to the same session.
 * WebSocket (RFC 7395) uses Strophe's XEP-0198 stream management: after a lost connection
 * or a reload, Connect resumes the same session if the server still holds it.
 *
 * Stable hooks for tests/browser: #jid #password #bosh-url #ws-url
 * input[name=transport][value=bosh|websocket] #connect #disconnect
 * #status[data-state=disconnected|connecting|connected|online|error][data-transport=bosh|websocket]
 * #me[data-jid] #to #body #send #log > li.msg[data-dir=in|out][data-from][data-to] > .text
 */
(function () {
  'use strict';

  var cfg = window.BOSH_DEMO_CONFIG || {};
  var params = new URLSearchParams(window.location.search);
  var $ = function (id) { return document.getElementById(id); };

  var el = {
    login: $('login'), jid: $('jid'), password: $('password'), bosh: $('bosh-url'), ws: $('ws-url'),
    transports: document.querySelectorAll('input[name="transport"]'),
    connect: $('connect'), disconnect: $('disconnect'), accounts: $('accounts'),
    status: $('status'), me: $('me'),
    compose: $('compose'), to: $('to'), body: $('body'), send: $('send'),
    log: $('log'), wire: $('wire'),
  };

  var conn = null;
  var connTransport = null;  // the transport of `conn`, whatever the radios say now
  var onlineFallback = null;
  var userDisconnect = false;
  var accounts = Array.isArray(cfg.accounts) ? cfg.accounts : [];
  var TRANSPORT_KEY = 'bosh-cm-demo.transport';
  var TRANSPORT_NAMES = { bosh: 'BOSH', websocket: 'WebSocket' };

  // ---- form defaults ---------------------------------------------------------------

  // A launcher listening on all addresses writes 0.0.0.0: use the name this page was opened with.
  function hereFor(url) {
    return url.replace('//0.0.0.0:', '//' + window.location.hostname + ':');
  }
  el.bosh.value = params.get('bosh') || hereFor(cfg.boshUrl || defaultBoshUrl());
  el.ws.value = params.get('ws') || hereFor(cfg.wsUrl || defaultWsUrl());
  setTransport(normalTransport(params.get('transport')) ||
               normalTransport(sessionStorage.getItem(TRANSPORT_KEY)) || 'bosh');
  var chosen = params.get('as');
  var account = accounts.find(function (a) {
    return chosen && (a.jid === chosen || a.jid.split('@')[0] === chosen);
  });
  if (account) {
    el.jid.value = account.jid;
    el.password.value = account.password || '';
  }
  if (params.get('jid')) el.jid.value = params.get('jid');
  if (params.get('to')) el.to.value = params.get('to');

  if (accounts.length) {
    el.accounts.hidden = false;
    el.accounts.textContent = 'Demo accounts: ' + accounts.map(function (a) {
      return a.jid + ' / ' + a.password;
    }).join(', ') + ' (or add ?as=' + accounts[0].jid.split('@')[0] + ' to the URL).';
  }

  function defaultBoshUrl() {
    return window.location.protocol + '//' + window.location.hostname + ':5280/http-bind';
  }

  function defaultWsUrl() {
    var scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + window.location.hostname + ':5280/xmpp-websocket';
  }

  // ---- transport choice ------------------------------------------------------------

  function normalTransport(value) {
    value = (value || '').toLowerCase();
    if (value === 'websocket' || value === 'ws') return 'websocket';
    if (value === 'bosh') return 'bosh';
    return null;
  }

  function chosenTransport() {
    var checked = document.querySelector('input[name="transport"]:checked');
    return checked ? checked.value : 'bosh';
  }

  function setTransport(transport) {
    el.transports.forEach(function (r) { r.checked = r.value === transport; });
    // Only the chosen transport's URL field is shown (and required).
    document.querySelectorAll('#login [data-transport]').forEach(function (n) {
      n.hidden = n.dataset.transport !== transport;
    });
    el.bosh.required = transport === 'bosh';
    el.ws.required = transport === 'websocket';
    if (!conn || !conn.connected) el.status.dataset.transport = transport;
    try { sessionStorage.setItem(TRANSPORT_KEY, transport); } catch (e) { /* private mode */ }
  }

  el.transports.forEach(function (r) {
    r.addEventListener('change', function () { if (r.checked) setTransport(r.value); });
  });

  function over() {
    return ' over ' + TRANSPORT_NAMES[connTransport || chosenTransport()];
  }

  // ---- status line -----------------------------------------------------------------

  function setState(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
    var busy = state === 'connecting' || state === 'connected' || state === 'online';
    el.connect.disabled = busy;
    el.disconnect.disabled = !busy;
    el.jid.disabled = el.password.disabled = el.bosh.disabled = el.ws.disabled = busy;
    el.transports.forEach(function (r) { r.disabled = busy; });
    el.send.disabled = state !== 'online';
  }

  function statusName(code) {
    var S = Strophe.Status;
    for (var k in S) { if (S[k] === code) return k; }
    return String(code);
  }

  function onStatus(code, condition) {
    var S = Strophe.Status;
    var why = condition ? ' (' + condition + ')' : '';
    switch (code) {
      case S.CONNECTING:
        setState('connecting', 'Connecting' + over() + ' to ' + conn.service + ' …'); break;
      case S.AUTHENTICATING: setState('connecting', 'Authenticating' + over() + ' …'); break;
      case S.CONNECTED:
      case S.ATTACHED:
        setState('connected', 'Connected as ' + conn.jid + over() + ', sending presence …');
        goOnline();
        break;
      case S.AUTHFAIL: setState('error', 'Login failed: wrong JID or password' + why); break;
      case S.CONNFAIL: setState('error', 'Connection failed' + why); break;
      case S.CONNTIMEOUT: setState('error', 'Connection timed out' + why); break;
      case S.ATTACHFAIL: setState('disconnected', 'Previous session could not be restored'); break;
      case S.DISCONNECTING: setState('connecting', 'Disconnecting …'); break;
      case S.DISCONNECTED:
        clearTimeout(onlineFallback);
        el.me.hidden = true;
        if (el.status.dataset.state === 'error') {
          setState('error', el.status.textContent);  // keep the message, re-enable the form
        } else if (!userDisconnect && connTransport === 'websocket' && conn.sm &&
                   conn.sm.hasResumableState()) {
          // XEP-0198: the server keeps the session for a while; Connect resumes it.
          setState('disconnected', 'Connection lost' + why + '; press Connect to resume the session');
        } else {
          setState('disconnected', 'Disconnected' + why);
        }
        userDisconnect = false;
        break;
      case S.ERROR: setState('error', 'Error' + why); break;
      default: logEvent('status ' + statusName(code) + why);
    }
  }

  // ---- XMPP ------------------------------------------------------------------------

  function newConnection(transport) {
    connTransport = transport;
    el.status.dataset.transport = transport;
    var c = transport === 'websocket'
      // XEP-0198 (Strophe 5 does it over WebSocket only); state kept in sessionStorage.
      ? new Strophe.Connection(el.ws.value.trim(), { enableStreamManagement: true })
      // Strophe's keepalive keeps jid/sid/rid in sessionStorage: a reload re-attaches.
      : new Strophe.Connection(el.bosh.value.trim(), { keepalive: true });
    c.rawInput = function (data) { wire('recv', data); };
    c.rawOutput = function (data) { wire('sent', data); };
    c.addHandler(onMessage, null, 'message', null, null, null);
    c.addHandler(onPresence, null, 'presence', null, null, null);
    return c;
  }

  function goOnline() {
    el.me.hidden = false;
    el.me.dataset.jid = conn.jid;
    el.me.textContent = conn.jid;
    if (!el.to.value) {
      var me = Strophe.getBareJidFromJid(conn.jid);
      var other = accounts.find(function (a) { return a.jid !== me; });
      if (other) el.to.value = other.jid;
    }
    // RFC 6121 §4.2.2: the server reflects initial presence to the sender's own
    // resource; that echo tells us the server has us as available. Some servers do
    // not echo; then fall back after a few seconds.
    conn.send($pres());
    clearTimeout(onlineFallback);
    onlineFallback = setTimeout(markOnline, 5000);
  }

  function markOnline() {
    clearTimeout(onlineFallback);
    if (conn && conn.connected && el.status.dataset.state === 'connected') {
      var resumed = conn.hasResumed && conn.hasResumed() ? ' (session resumed, XEP-0198)' : '';
      setState('online', 'Online as ' + Strophe.getBareJidFromJid(conn.jid) + over() + resumed);
      (el.to.value ? el.body : el.to).focus();
    }
  }

  function onPresence(stanza) {
    var from = stanza.getAttribute('from');
    var type = stanza.getAttribute('type');
    if (conn && from === conn.jid && !type) {
      markOnline();
    } else if (from && Strophe.getBareJidFromJid(from) !== Strophe.getBareJidFromJid(conn.jid)) {
      logEvent(from + (type === 'unavailable' ? ' went offline' : type ? ' sent presence ' + type : ' is online'));
    }
    return true;
  }

  function childText(stanza, name) {
    for (var i = 0; i < stanza.childNodes.length; i++) {
      var n = stanza.childNodes[i];
      if (n.nodeType === 1 && (n.localName || n.nodeName) === name) return n.textContent;
    }
    return null;
  }

  function onMessage(stanza) {
    var from = stanza.getAttribute('from') || '';
    var type = stanza.getAttribute('type') || 'normal';
    if (type === 'error') {
      var err = stanza.getElementsByTagName('error')[0];
      var cond = err && err.firstElementChild ? err.firstElementChild.localName : 'unknown';
      addEntry({ dir: 'in', from: from, to: stanza.getAttribute('to') || '',
                 text: 'Error from ' + from + ': ' + cond, error: true });
      return true;
    }
    var text = childText(stanza, 'body');
    if (text === null) return true; // chat states, receipts, ...
    addEntry({ dir: 'in', from: from, to: stanza.getAttribute('to') || '', text: text });
    return true;
  }

  // ---- log rendering (textContent only: message bodies are untrusted) ------------------

  function addEntry(m) {
    var li = document.createElement('li');
    li.className = 'msg ' + m.dir + (m.error ? ' error' : '');
    li.dataset.dir = m.dir;
    li.dataset.from = Strophe.getBareJidFromJid(m.from);
    li.dataset.fromFull = m.from;
    li.dataset.to = m.to;
    var meta = document.createElement('div');
    meta.className = 'meta';
    var who = document.createElement('span');
    who.className = 'who';
    who.textContent = m.dir === 'in' ? m.from : 'me → ' + m.to;
    who.title = 'reply to this JID';
    who.addEventListener('click', function () {
      el.to.value = m.dir === 'in' ? Strophe.getBareJidFromJid(m.from) : m.to;
      el.body.focus();
    });
    var time = document.createElement('span');
    time.textContent = new Date().toLocaleTimeString();
    meta.append(who, time);
    var body = document.createElement('div');
    body.className = 'text';
    body.textContent = m.text;
    li.append(meta, body);
    appendToLog(li);
  }

  function logEvent(text) {
    var li = document.createElement('li');
    li.className = 'event';
    li.textContent = text;
    appendToLog(li);
  }

  function appendToLog(li) {
    var atBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
    el.log.appendChild(li);
    if (atBottom) el.log.scrollTop = el.log.scrollHeight;
  }

  var SECRET = /(<(auth|response|challenge|success)\b[^>]*>)[^<]+(<\/\2>)/g;
  function wire(dir, data) {
    if (!data) return;
    var d = document.createElement('div');
    d.className = dir;
    d.textContent = (dir === 'sent' ? '→ ' : '← ') + String(data).replace(SECRET, '$1…$3');
    el.wire.appendChild(d);
    while (el.wire.childNodes.length > 300) el.wire.removeChild(el.wire.firstChild);
  }

  // ---- UI events -------------------------------------------------------------------

  el.login.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var jid = el.jid.value.trim();
    if (jid.indexOf('@') < 0 && accounts.length) jid += '@' + accounts[0].jid.split('@')[1];
    if (conn) { try { conn.reset(); } catch (e) { /* ignore */ } }
    userDisconnect = false;
    conn = newConnection(chosenTransport());
    setState('connecting', 'Connecting' + over() + ' …');
    conn.connect(jid, el.password.value, onStatus);
  });

  el.disconnect.addEventListener('click', function () {
    userDisconnect = true;
    if (conn) conn.disconnect('user logged out');
  });

  el.compose.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var to = el.to.value.trim();
    var text = el.body.value;
    if (!conn || el.status.dataset.state !== 'online' || !to || !text.trim()) return;
    conn.send($msg({ to: to, type: 'chat', id: conn.getUniqueId('msg') }).c('body').t(text));
    addEntry({ dir: 'out', from: conn.jid, to: to, text: text });
    el.body.value = '';
    el.body.focus();
  });

  // ---- page reload: keepalive stored the BOSH session in sessionStorage; re-attach ----
  // (Over WebSocket there is nothing to re-attach to: Connect logs in and resumes, XEP-0198.)

  if (chosenTransport() === 'bosh') {
    try {
      conn = newConnection('bosh');
      conn.restore(null, onStatus);
    } catch (e) {
      conn = null; // nothing stored (Strophe.SessionError) or not restorable
      setState('disconnected', 'Disconnected');
    }
  } else {
    setState('disconnected', 'Disconnected');
  }
})();
