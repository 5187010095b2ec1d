//! A headless Chromium driven over WebDriver (`chromedriver`), for the pages people open
//! from their email: what a browser shows and what its clicks do.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

/// WebDriver's key for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Start chromedriver and a headless Chromium (Debian's `chromium` and
    /// `chromium-driver`; `scripts/test` installs them where missing).
    pub async fn start() -> Self {
        Self::launch(&[]).await
    }

    /// A browser with JavaScript turned off, as some readers keep it.
    pub async fn without_javascript() -> Self {
        Self::launch(&["--blink-settings=scriptEnabled=false"]).await
    }

    async fn launch(extra_args: &[&str]) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver =
            Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("chromedriver is installed (apt-get install chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let http = crate::helpers::http();
        crate::helpers::until(
            "chromedriver to answer",
            Duration::from_secs(10),
            || async { http.get(format!("{base}/status")).send().await.is_ok() },
        )
        .await;
        let profile = crate::helpers::temp_dir();
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .chain(extra_args)
        .map(|arg| (*arg).to_owned())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": args,
            },
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        let browser = Browser {
            driver,
            base,
            session,
            http,
        };
        // Finding an element waits for it (up to 10 s): a click that submits a form
        // returns before the next page is there.
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                json!({ "implicit": 10_000 }),
            )
            .await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"].get("error").is_some() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.read(css, "text").await
    }

    /// An attribute of the first element matching `css`, as the page has it.
    pub async fn attribute(&self, css: &str, name: &str) -> String {
        self.read(css, &format!("attribute/{name}")).await
    }

    /// `GET /element/{id}/{what}` of the first element matching `css`. A page that is
    /// replaced between finding the element and reading it (a form posted a moment ago)
    /// makes the element stale: it is found again on the new page.
    async fn read(&self, css: &str, what: &str) -> String {
        for _ in 0..10 {
            let id = self.element(css).await;
            let url = format!("{}/session/{}/element/{id}/{what}", self.base, self.session);
            let answer: Value = self
                .http
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match answer["value"].get("error").and_then(Value::as_str) {
                Some("stale element reference") => continue,
                Some(_) => panic!("WebDriver /element/{id}/{what}: {answer}"),
                None => return answer["value"].as_str().unwrap_or_default().to_owned(),
            }
        }
        panic!("{css} kept going stale");
    }

    /// Whether an element matching `css` is on the page (waiting for it a while).
    pub async fn has(&self, css: &str) -> bool {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found.as_array().is_some_and(|a| !a.is_empty())
    }
}

impl Drop for Browser {
    /// End the session (chromedriver then quits Chromium), also when a test failed, then
    /// stop chromedriver. Plain blocking I/O: there is no runtime to await on in a drop.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
        let _ = self.driver.start_kill();
    }
}
