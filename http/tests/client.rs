//! The client's bounds and error mapping against a canned-response server: statuses, bodies
//! that are not JSON or too large, redirect chains, timeouts.

mod support;

use std::time::{Duration, Instant};

use support::{Answer, serve, serve_always};
use tickwire_http::scanner::Scanner;
use tickwire_http::search::{self, SearchQuery};
use tickwire_http::session::Cookies;
use tickwire_http::token::{self, TokenError};
use tickwire_http::{HttpClient, HttpConfig, HttpError, ORIGIN, REFERER, Secret, signin};

const EMPTY_SEARCH: &str = r#"{"symbols_remaining":0,"symbols":[]}"#;

fn search_error(client: &HttpClient) -> HttpError {
    search::search(client, &SearchQuery::new("AAPL")).expect_err("the search should fail")
}

#[test]
fn every_request_sends_origin_referer_user_agent_and_accept() {
    let server = serve(|request, _| match request.path() {
        "/symbol_search/v3/" => Answer::json(200, EMPTY_SEARCH),
        "/global/scan" => Answer::json(200, r#"{"totalCount":0,"data":[]}"#),
        "/accounts/signin/" => Answer::json(200, r#"{"error":"Invalid","code":"x"}"#),
        _ => Answer::html(200, "<html>anonymous</html>"),
    });
    let client = server.client();
    search::search(&client, &SearchQuery::new("AAPL")).unwrap();
    Scanner::new(client.clone()).scan(&["NASDAQ:AAPL"]).unwrap();
    let _ = signin::sign_in(&client, "user", &Secret::from("pw"));
    let _ = token::fetch_auth_token(&client, &Cookies::new("sid"));
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    for request in &requests {
        assert_eq!(request.header("origin"), Some(ORIGIN), "{request:?}");
        assert_eq!(request.header("referer"), Some(REFERER), "{request:?}");
        let agent = request.header("user-agent").unwrap_or_default();
        assert!(
            agent.starts_with("Mozilla/5.0") && agent.contains("Chrome/"),
            "{agent}"
        );
        let accept = request.header("accept").unwrap_or_default();
        if request.path() == "/" {
            assert!(accept.starts_with("text/html"), "{accept}");
        } else {
            assert_eq!(accept, "application/json");
        }
    }
}

#[test]
fn rate_limited_with_retry_after_seconds() {
    let server = serve_always(
        Answer::json(429, r#"{"error":"Too many requests"}"#).header("Retry-After", "120"),
    );
    let error = search_error(&server.client());
    assert_eq!(
        error,
        HttpError::RateLimited {
            retry_after: Some(Duration::from_secs(120))
        }
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    assert!(error.is_transient());
}

#[test]
fn rate_limited_without_retry_after_or_with_a_date() {
    let server = serve(|_, index| {
        let answer = Answer::html(429, "<html>slow down</html>");
        if index == 0 {
            answer
        } else {
            answer.header("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")
        }
    });
    let client = server.client();
    for _ in 0..2 {
        assert_eq!(
            search_error(&client),
            HttpError::RateLimited { retry_after: None }
        );
    }
}

#[test]
fn forbidden_names_the_request() {
    let server = serve_always(Answer::html(403, "<html><body>403 Forbidden</body></html>"));
    let client = server.client();
    let error = search_error(&client);
    assert_eq!(
        error,
        HttpError::Forbidden {
            what: "symbol search".into()
        }
    );
    assert!(
        error
            .to_string()
            .contains("missing Origin/Referer or blocked")
    );
    assert!(!error.is_transient());
    let error = Scanner::new(client).scan(&["A:B"]).unwrap_err();
    assert_eq!(
        error,
        HttpError::Forbidden {
            what: "scanner".into()
        }
    );
}

#[test]
fn html_where_json_is_expected() {
    let server = serve_always(Answer::html(
        200,
        "<!DOCTYPE html>\n<html>\n<head><title>TradingView</title></head><body>hello</body></html>",
    ));
    let error = search_error(&server.client());
    let HttpError::NotJson { status, snippet } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*status, 200);
    assert!(
        snippet.starts_with("<!DOCTYPE html><html><head>"),
        "{snippet}"
    );
    assert!(snippet.chars().count() <= 80);
    assert!(!error.is_transient());
}

#[test]
fn truncated_json_and_json_errors() {
    let server = serve(|request, _| match request.path() {
        "/symbol_search/v3/" => Answer::json(200, r#"{"symbols_remaining":3,"symbols":[{"sym"#),
        _ => Answer::json(400, r#"{"error":"too many tickers"}"#),
    });
    let client = server.client();
    assert!(matches!(
        search_error(&client),
        HttpError::NotJson { status: 200, .. }
    ));
    assert_eq!(
        Scanner::new(client).scan(&["A:B"]).unwrap_err(),
        HttpError::Status {
            code: 400,
            api_code: None,
            message: Some("too many tickers".into())
        }
    );
}

#[test]
fn server_errors_are_transient() {
    let server = serve_always(Answer::html(502, "<html>Bad Gateway</html>"));
    let error = search_error(&server.client());
    assert_eq!(
        error,
        HttpError::Status {
            code: 502,
            api_code: None,
            message: None
        }
    );
    assert!(error.is_transient());
}

fn small_bound(server: &support::Server) -> HttpClient {
    HttpClient::new(HttpConfig {
        max_body: 64 * 1024,
        ..server.config()
    })
}

#[test]
fn a_streamed_body_past_the_bound_is_too_large() {
    let server = serve_always(Answer::Stream {
        status: 200,
        total: 1024 * 1024,
    });
    assert_eq!(
        search_error(&small_bound(&server)),
        HttpError::TooLarge { limit: 64 * 1024 }
    );
}

#[test]
fn a_declared_length_past_the_bound_is_refused_before_reading() {
    // The server declares 10 MiB and sends nothing: reading would time out, refusing does not.
    let server = serve_always(Answer::Declared {
        status: 200,
        declared: 10 * 1024 * 1024,
    });
    assert_eq!(
        search_error(&small_bound(&server)),
        HttpError::TooLarge { limit: 64 * 1024 }
    );
}

#[test]
fn a_body_exactly_at_the_bound_is_read() {
    let mut body = EMPTY_SEARCH.as_bytes().to_vec();
    body.resize(64 * 1024, b' ');
    let server = serve_always(Answer::json(200, body));
    let found = search::search(&small_bound(&server), &SearchQuery::new("X")).unwrap();
    assert!(found.is_empty());
}

#[test]
fn the_default_bound_stops_a_9_mib_stream() {
    let server = serve_always(Answer::Stream {
        status: 200,
        total: 9 * 1024 * 1024,
    });
    assert_eq!(
        search_error(&server.client()),
        HttpError::TooLarge {
            limit: 8 * 1024 * 1024
        }
    );
}

/// Answers `hops` redirects (each Location in another form), then the real answer, setting a
/// cookie on the first and second hops.
fn redirect_chain(hops: usize) -> support::Server {
    serve(move |request, index| {
        if index >= hops {
            return if request.path() == "/" || request.path().starts_with("/hop") {
                Answer::html(
                    200,
                    r#"<script>var user = {"id":9,"username":"eve","auth_token":"tok.en.x"};</script>"#,
                )
            } else {
                Answer::json(200, EMPTY_SEARCH)
            };
        }
        let location = match index % 4 {
            0 => "/hop/a/b".to_owned(),
            1 => "c".to_owned(),
            2 => "?page=2".to_owned(),
            _ => format!(
                "http://{}/hop/z",
                request.header("host").unwrap_or_default()
            ),
        };
        let answer = Answer::redirect(if index % 2 == 0 { 302 } else { 301 }, &location);
        match index {
            0 => answer.header("Set-Cookie", "sessionid=fresh; Path=/; HttpOnly"),
            1 => answer.header("Set-Cookie", "device_t=dev; Path=/; Max-Age=100"),
            _ => answer,
        }
    })
}

#[test]
fn five_redirects_are_followed_with_the_cookies() {
    let server = redirect_chain(5);
    let start = Cookies {
        sessionid: "old".into(),
        sessionid_sign: Some("sign".into()),
        device_t: None,
    };
    let token = token::fetch_auth_token(&server.client(), &start).unwrap();
    let requests = server.requests();
    let targets: Vec<_> = requests.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/",
            "/hop/a/b",
            "/hop/a/c",
            "/hop/a/c?page=2",
            "/hop/z",
            "/hop/a/b"
        ]
    );
    assert_eq!(
        requests[0].header("cookie"),
        Some("sessionid=old; sessionid_sign=sign")
    );
    assert_eq!(requests[1].cookie("sessionid").as_deref(), Some("fresh"));
    assert_eq!(requests[1].cookie("device_t"), None);
    for request in &requests[2..] {
        assert_eq!(
            request.header("cookie"),
            Some("sessionid=fresh; sessionid_sign=sign; device_t=dev")
        );
    }
    assert_eq!(token.token.expose(), "tok.en.x");
    assert_eq!(
        token.updated_cookies,
        Some(Cookies {
            sessionid: "fresh".into(),
            sessionid_sign: Some("sign".into()),
            device_t: Some("dev".into()),
        })
    );
}

#[test]
fn a_sixth_redirect_is_too_many() {
    let server = redirect_chain(6);
    let error = search_error(&server.client());
    assert_eq!(error, HttpError::TooManyRedirects { limit: 5 });
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn a_redirect_loop_stops_at_the_bound() {
    let server = serve(|request, _| Answer::redirect(302, &request.target.clone()));
    let client = HttpClient::new(HttpConfig {
        max_redirects: 2,
        ..server.config()
    });
    assert_eq!(
        search_error(&client),
        HttpError::TooManyRedirects { limit: 2 }
    );
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn a_redirect_without_location_is_bad() {
    let server = serve_always(Answer::json(301, "{}"));
    assert_eq!(search_error(&server.client()), HttpError::BadRedirect);
    let server = serve_always(Answer::redirect(302, "javascript:alert(1)"));
    assert_eq!(search_error(&server.client()), HttpError::BadRedirect);
}

#[test]
fn post_redirects_follow_what_browsers_do() {
    // 307 repeats the POST with its body; 302 continues as a GET.
    let server = serve(|request, index| match index {
        0 => Answer::redirect(307, "/again/scan"),
        1 => Answer::redirect(302, "/then/scan"),
        _ => Answer::json(
            200,
            format!(
                r#"{{"data":[{{"s":"A:B","d":[1]}}],"method":"{}"}}"#,
                request.method
            ),
        ),
    });
    let outcome = Scanner::new(server.client()).scan(&["A:B"]).unwrap();
    assert_eq!(outcome.rows.len(), 1);
    let requests = server.requests();
    let methods: Vec<_> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["POST", "POST", "GET"]);
    assert_eq!(requests[0].body, requests[1].body);
    assert!(requests[2].body.is_empty());
}

#[test]
fn cookies_do_not_follow_a_redirect_to_another_host() {
    let elsewhere = serve_always(Answer::html(200, "<html>anonymous</html>"));
    let location = format!(
        "http://localhost:{}/",
        elsewhere.base().rsplit(':').next().unwrap()
    );
    let server =
        serve(move |_, _| Answer::redirect(302, &location).header("Set-Cookie", "sessionid=fresh"));
    let error = token::fetch_auth_token(&server.client(), &Cookies::new("secret-sid")).unwrap_err();
    assert_eq!(error, TokenError::SessionExpired);
    assert_eq!(
        server.requests()[0].cookie("sessionid").as_deref(),
        Some("secret-sid")
    );
    let foreign = elsewhere.requests();
    assert_eq!(foreign.len(), 1);
    assert_eq!(foreign[0].header("cookie"), None);
}

fn one_second(server: &support::Server) -> HttpClient {
    HttpClient::new(HttpConfig {
        timeout: Duration::from_secs(1),
        ..server.config()
    })
}

#[test]
fn a_server_that_never_answers_times_out() {
    let server = serve_always(Answer::Hang);
    let started = Instant::now();
    let error = search_error(&one_second(&server));
    assert_eq!(error, HttpError::Timeout);
    assert!(error.is_transient());
    // Generous: only that it did not wait for the fixture's own 20 s hang.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_body_that_never_comes_times_out() {
    let server = serve_always(Answer::Declared {
        status: 200,
        declared: 100,
    });
    let started = Instant::now();
    assert_eq!(search_error(&one_second(&server)), HttpError::Timeout);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_closed_port_is_a_connect_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = HttpClient::new(HttpConfig {
        bases: tickwire_http::Bases::single(&format!("http://127.0.0.1:{port}")),
        ..HttpConfig::default()
    });
    let error = search_error(&client);
    assert!(matches!(error, HttpError::Connect(_)), "{error:?}");
    assert!(error.is_transient());
}

#[test]
fn a_bad_base_is_a_bad_url() {
    let client = HttpClient::new(HttpConfig {
        bases: tickwire_http::Bases::single("not a url"),
        ..HttpConfig::default()
    });
    assert!(matches!(search_error(&client), HttpError::BadUrl(_)));
}
