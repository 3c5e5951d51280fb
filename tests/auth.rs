//! Login for everything not public, against a real `humanline serve` over HTTP on 127.0.0.1:
//! nothing under /api answers without a login, a wrong password is refused, a change needs
//! the session's CSRF token and Humanline's own origin, failed logins are rate-limited, and
//! an agent cannot do a supervisor's thing. Users are added with `humanline users add`, the
//! password on stdin, as an operator would.
//!
//! Run: `cargo test --release --test auth -- --test-threads=2`.

mod common;

use common::*;

fn login_as(server: &Server, name: &str, password: &str) -> HttpReply {
    server.request(
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        &login_body(name, password),
    )
}

/// Opens the desk's event stream with `cookie` and returns the first event's data.
fn first_desk_event(server: &Server, cookie: &str) -> String {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.ports.http()));
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET /api/desk/events HTTP/1.1\r\nHost: {LOCALHOST}:{}\r\nCookie: {cookie}\r\n\r\n",
        server.ports.http()
    )
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("\ndata: ") || !text[text.find("\ndata: ").unwrap()..].contains("\n\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(text.contains("text/event-stream"), "{text}");
    let start = text
        .find("\ndata: ")
        .map(|i| i + 7)
        .unwrap_or_else(|| panic!("no event: {text}"));
    text[start..].lines().next().unwrap_or_default().to_string()
}

fn own_origin(server: &Server) -> String {
    format!("http://{LOCALHOST}:{}", server.ports.http())
}

#[test]
fn nothing_under_api_answers_without_a_login_and_roles_are_kept() {
    let ports = Ports::claim(7);
    let dir = tempdir("auth-api");
    let server = Server::start(ports, dir.path(), &[]);

    // Open: health and metrics.
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/metrics").0, 200);
    // Everything under /api, known or not, needs a login; a made-up cookie is no login.
    for path in [
        "/api/callbacks",
        "/api/callbacks/1",
        "/api/session",
        "/api/desk",
        "/api/desk/events",
        "/api/nothing-here",
    ] {
        let r = server.request("GET", path, &[], "");
        assert_eq!(r.status, 401, "GET {path} without a login: {}", r.body);
        let r = server.request("GET", path, &[("Cookie", "humanline_session=0123abcd")], "");
        assert_eq!(
            r.status, 401,
            "GET {path} with a made-up session: {}",
            r.body
        );
    }

    // The console sends a browser without a session to the login form.
    let r = server.request("GET", "/console", &[], "");
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/login")),
        "{}",
        r.body
    );
    let r = server.request("GET", "/login", &[], "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("type=\"password\""), "{}", r.body);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));

    server.add_user("sam", "supervisor", "sam-password-1");
    server.add_user("ann", "agent", "ann-password-1");

    // Wrong password, unknown user: refused, no session.
    for (name, pw) in [
        ("ann", "ann-password-2"),
        ("nobody", "ann-password-1"),
        ("ann", ""),
    ] {
        let r = login_as(&server, name, pw);
        assert_eq!(r.status, 401, "login {name}/{pw}: {}", r.body);
        assert!(
            r.header("set-cookie").is_none(),
            "a refused login set a cookie"
        );
    }

    let r = login_as(&server, "ann", "ann-password-1");
    assert_eq!(r.status, 200, "{}", r.body);
    let ann = Login::from_reply(&r);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            ann.set_cookie.contains(flag),
            "cookie without {flag}: {}",
            ann.set_cookie
        );
    }
    assert!(
        !ann.set_cookie.contains("Secure"),
        "Secure only when configured: {}",
        ann.set_cookie
    );
    assert_eq!(ann.csrf.len(), 64, "{}", r.body);

    let me = server.request("GET", "/api/session", &[("Cookie", &ann.cookie)], "");
    assert_eq!(me.status, 200, "{}", me.body);
    let v: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(
        (v["user"].as_str(), v["role"].as_str()),
        (Some("ann"), Some("agent"))
    );

    let r = server.request("GET", "/console", &[("Cookie", &ann.cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("agent console"), "{}", r.body);
    let r = server.request("GET", "/api/desk", &[("Cookie", &ann.cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let event: serde_json::Value =
        serde_json::from_str(&first_desk_event(&server, &ann.cookie)).unwrap();
    assert!(
        event["waiting"].is_array() && event["agents"].is_array(),
        "{event}"
    );

    // Callers' numbers are a supervisor's: the agent is refused, the supervisor reads them.
    let r = server.request("GET", "/api/callbacks", &[("Cookie", &ann.cookie)], "");
    assert_eq!(r.status, 403, "an agent read the callbacks: {}", r.body);
    let sam = server.login("sam", "sam-password-1");
    let r = server.request("GET", "/api/callbacks", &[("Cookie", &sam.cookie)], "");
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));

    // A removed user's session ends at once.
    let out = users_command(&server.data_dir, &["remove", "ann"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = server.request("GET", "/api/session", &[("Cookie", &ann.cookie)], "");
    assert_eq!(
        r.status, 401,
        "a removed user is still logged in: {}",
        r.body
    );
}

#[test]
fn a_change_needs_the_csrf_token_and_humanlines_own_origin() {
    let ports = Ports::claim(8);
    let dir = tempdir("auth-csrf");
    let server = Server::start(ports, dir.path(), &[]);
    server.add_user("ann", "agent", "ann-password-1");
    let ann = server.login("ann", "ann-password-1");
    let origin = own_origin(&server);
    let evil = "http://evil.example";

    // Another site's page making the browser POST (the cookie would go along): refused.
    let r = server.request(
        "POST",
        "/logout",
        &[
            ("Cookie", &ann.cookie),
            ("Origin", evil),
            ("X-CSRF-Token", &ann.csrf),
        ],
        "",
    );
    assert_eq!(r.status, 403, "cross-origin POST: {}", r.body);
    let r = server.request(
        "POST",
        "/logout",
        &[
            ("Cookie", &ann.cookie),
            ("Sec-Fetch-Site", "cross-site"),
            ("X-CSRF-Token", &ann.csrf),
        ],
        "",
    );
    assert_eq!(r.status, 403, "cross-site POST without Origin: {}", r.body);
    // Without the token, or with another: refused.
    let r = server.request(
        "POST",
        "/logout",
        &[("Cookie", &ann.cookie), ("Origin", &origin)],
        "",
    );
    assert_eq!(r.status, 403, "POST without CSRF token: {}", r.body);
    let wrong = "0".repeat(64);
    let r = server.request(
        "POST",
        "/logout",
        &[
            ("Cookie", &ann.cookie),
            ("Origin", &origin),
            ("X-CSRF-Token", &wrong),
        ],
        "",
    );
    assert_eq!(r.status, 403, "POST with a wrong CSRF token: {}", r.body);
    // Her own presence she may set (with the token), a colleague's only a supervisor may.
    let json = ("Content-Type", "application/json");
    let r = server.request(
        "POST",
        "/api/me/presence",
        &[("Cookie", &ann.cookie), ("Origin", &origin), json],
        r#"{"presence": "away"}"#,
    );
    assert_eq!(r.status, 403, "presence without CSRF token: {}", r.body);
    let r = server.change(&ann, "/api/me/presence", r#"{"presence": "away"}"#);
    assert_eq!(r.status, 200, "own presence: {}", r.body);
    let r = server.change(&ann, "/api/agents/bob/presence", r#"{"presence": "away"}"#);
    assert_eq!(
        r.status, 403,
        "an agent set a colleague's presence: {}",
        r.body
    );

    // Logging in from another site's page is refused too (login CSRF).
    let r = server.request(
        "POST",
        "/login",
        &[("Content-Type", "application/json"), ("Origin", evil)],
        &login_body("ann", "ann-password-1"),
    );
    assert_eq!(r.status, 403, "cross-origin login: {}", r.body);

    // None of that logged her out; her own page can.
    let r = server.request("GET", "/api/session", &[("Cookie", &ann.cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.change(&ann, "/logout", "");
    assert_eq!(r.status, 204, "logout: {}", r.body);
    let r = server.request("GET", "/api/session", &[("Cookie", &ann.cookie)], "");
    assert_eq!(r.status, 401, "still logged in after logout: {}", r.body);
}

#[test]
fn failed_logins_are_rate_limited_per_user_and_per_address() {
    let ports = Ports::claim(9);
    let dir = tempdir("auth-limit");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "[auth]\nsecure_cookie = true\nmax_failed_logins_per_user = 3\nmax_failed_logins_per_ip = 6\nfailed_login_window_ms = 60000\n",
    )
    .unwrap();
    let server = Server::start_with(
        ports,
        dir.path(),
        &[],
        &["--config".into(), config.display().to_string()],
    );
    server.add_user("ann", "agent", "ann-password-1");
    server.add_user("sam", "supervisor", "sam-password-1");

    for i in 0..3 {
        let r = login_as(&server, "ann", &format!("guess-{i}"));
        assert_eq!(r.status, 401, "guess {i}: {}", r.body);
    }
    // Locked: even the right password is refused now, with a time to come back.
    let r = login_as(&server, "ann", "ann-password-1");
    assert_eq!(r.status, 429, "after 3 failures: {}", r.body);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");

    // Another user is not locked by ann's failures; the cookie is Secure as configured.
    let r = login_as(&server, "sam", "sam-password-1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(Login::from_reply(&r).set_cookie.contains("Secure"));
    // Guessing across names from one address locks the address: 3 more failures make 6.
    for name in ["x1", "x2", "x3"] {
        assert_eq!(login_as(&server, name, "whatever-1").status, 401);
    }
    let r = login_as(&server, "sam", "sam-password-1");
    assert_eq!(r.status, 429, "the address was not locked: {}", r.body);
}
