import Mustache

/// The agent console's pages (Mustache; `{{ }}` escapes HTML). Kept in code so the
/// executable needs no resource bundle in a container.
enum ConsoleTemplates {
    static let library: MustacheLibrary = {
        var library = MustacheLibrary()
        // The templates are constants: a syntax error is a programming error caught by the tests.
        try! library.register(login, named: "login")
        try! library.register(page, named: "page")
        try! library.register(panel, named: "panel")
        return library
    }()

    static let head = """
        <meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
        <link rel="stylesheet" href="/console/console.css">
        """

    static let login = """
        <!doctype html>
        <html lang="en"><head>\(head)<title>Veil agent console: sign in</title></head>
        <body class="login">
        <main>
          <h1>Veil agent console</h1>
          {{#error}}<p id="login-error" role="alert">{{error}}</p>{{/error}}
          <form id="login-form" method="post" action="/console/login">
            <label for="agent-id">Agent id</label>
            <input id="agent-id" name="agentId" autocomplete="username" required value="{{agentId}}">
            <label for="password">Password</label>
            <input id="password" name="password" type="password" autocomplete="current-password" required>
            <button id="sign-in" type="submit">Sign in</button>
          </form>
        </main>
        </body></html>
        """

    static let page = """
        <!doctype html>
        <html lang="en"><head>\(head)<title>Veil agent console</title></head>
        <body>
        <header>
          <h1>Veil agent console</h1>
          <span id="agent">{{agentName}} ({{agentId}})</span>
          <form method="post" action="/console/logout"><button id="sign-out" type="submit">Sign out</button></form>
        </header>
        <div id="panel">{{> panel}}</div>
        <script src="/console/console.js"></script>
        </body></html>
        """

    static let panel = """
        <section id="queue-section"><h2>Queue</h2><p id="queue">{{waiting}} {{waitingNoun}} waiting</p></section>
        <section id="offers"><h2>Offered to you</h2>
        {{^offers}}<p class="empty">No chat offered right now.</p>{{/offers}}
        {{#offers}}
          <article class="offer" data-request-id="{{requestId}}">
            <p><strong>{{category}}</strong>: {{firstMessage}}</p>
            <p class="expires">answer before {{expiresAt}}</p>
            <form method="post" action="/console/offers/{{reservationId}}/accept"><button class="accept" type="submit">Accept</button></form>
            <form method="post" action="/console/offers/{{reservationId}}/decline"><button class="decline" type="submit">Decline</button></form>
          </article>
        {{/offers}}
        </section>
        <section id="conversations"><h2>Your chats</h2>
        {{^conversations}}<p class="empty">No open chat.</p>{{/conversations}}
        {{#conversations}}
          <article class="conversation" data-request-id="{{requestId}}">
            <h3>{{category}} <small>{{requestId}}</small>
              {{#sms}}<span class="channel" data-channel="sms">via SMS{{#appConnected}}, app connected{{/appConnected}}</span>{{/sms}}</h3>
            <ol class="messages">
            {{#messages}}<li class="message" data-sender="{{sender}}"><span class="sender">{{sender}}</span> {{text}}</li>{{/messages}}
            </ol>
            <ul class="forms">
            {{#forms}}<li class="secure-form" data-form-id="{{id}}" data-outcome="{{outcome}}">{{text}}</li>{{/forms}}
            </ul>
            <form class="message-form" method="post" action="/console/chats/{{requestId}}/messages">
              <textarea class="message-text" name="text" data-request-id="{{requestId}}" required maxlength="2000"></textarea>
              <button class="send" type="submit">Send</button>
            </form>
            <form class="secure-form-request" method="post" action="/console/chats/{{requestId}}/forms">
              <label>Ask for <select class="form-kind" name="kind" data-request-id="{{requestId}}">
                <option value="pin">PIN</option><option value="card">card number</option><option value="national-id">national id</option>
              </select></label>
              <button class="request-form" type="submit">Send secure form</button>
            </form>
            {{#sms}}
            <form class="sms-form" method="post" action="/console/chats/{{requestId}}/sms">
              <input class="sms-text" name="text" data-request-id="{{requestId}}" required maxlength="480" placeholder="Text the customer">
              <button class="send-sms" type="submit">Send SMS</button>
            </form>
            {{/sms}}
            {{#appConnected}}
            <form class="command-form" method="post" action="/console/chats/{{requestId}}/command">
              <label>App command <select class="app-command" name="command" data-request-id="{{requestId}}">
                <option value="open-diagnostics">open diagnostics</option><option value="show-appointment">show appointment</option>
                <option value="request-photo">request a photo</option>
              </select></label>
              <button class="send-command" type="submit">Send to app</button>
            </form>
            {{/appConnected}}
            <form method="post" action="/console/chats/{{requestId}}/close"><button class="close" type="submit">Close chat</button></form>
          </article>
        {{/conversations}}
        </section>
        """

    static let script = """
        // Live updates: every server-sent event re-renders the panel (what the agent types is kept).
        (function () {
          var panel = document.getElementById('panel');
          if (!panel || !window.EventSource) return;
          var busy = false, again = false;
          function refresh() {
            if (busy) { again = true; return; }
            busy = true;
            fetch('/console/panel', {credentials: 'same-origin', cache: 'no-store'}).then(function (response) {
              if (response.status === 401) { window.location = '/console/login'; return null; }
              return response.ok ? response.text() : null;
            }).then(function (html) {
              if (html === null) return;
              // Keep what the agent typed or chose in each chat across the re-render.
              var kept = {};
              panel.querySelectorAll('textarea.message-text, select.form-kind').forEach(function (field) {
                kept[field.className + ':' + field.dataset.requestId] = field.value;
              });
              panel.innerHTML = html;
              panel.querySelectorAll('textarea.message-text, select.form-kind').forEach(function (field) {
                var value = kept[field.className + ':' + field.dataset.requestId];
                if (value) field.value = value;
              });
            }).finally(function () {
              busy = false;
              if (again) { again = false; refresh(); }
            });
          }
          new EventSource('/console/events').addEventListener('changed', refresh);
        })();
        """

    static let stylesheet = """
        body { font-family: system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
        header { display: flex; gap: 1rem; align-items: center; padding: .5rem 1rem; background: #1d2330; color: white; }
        header h1 { font-size: 1.1rem; margin: 0; flex: 1; }
        main, #panel { max-width: 60rem; margin: 1rem auto; padding: 0 1rem; }
        section { background: white; border-radius: 8px; padding: .5rem 1rem; margin-bottom: 1rem; box-shadow: 0 1px 2px #0002; }
        .offer, .conversation { border-top: 1px solid #e3e6eb; padding: .5rem 0; }
        .messages { list-style: none; padding: 0; }
        .message { margin: .25rem 0; }
        .message[data-sender=agent] { text-align: right; }
        .message[data-sender=system], .secure-form { color: #555; font-style: italic; }
        .sender { font-size: .75rem; color: #888; text-transform: uppercase; }
        .secure-form[data-outcome=verified], .secure-form[data-outcome=tokenized] { color: #17733a; }
        .secure-form[data-outcome=not-verified], .secure-form[data-outcome=invalid], .secure-form[data-outcome=locked] { color: #a11; }
        textarea { width: 100%; min-height: 3rem; }
        form { display: inline-block; margin: .25rem .5rem .25rem 0; }
        .message-form { display: block; }
        .channel { font-size: .75rem; background: #fff3cd; border-radius: 4px; padding: 0 .4rem; }
        #login-error { color: #a11; }
        .login label, .login input { display: block; margin: .25rem 0; }
        """
}
