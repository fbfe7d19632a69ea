//! A real headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol, for the status page test.
//!
//! The protocol runs over `--remote-debugging-pipe` (the browser reads
//! commands on fd 3 and writes answers and events on fd 4, each message
//! JSON ended by a NUL byte), not a WebSocket: no client crate, no
//! debugging port another process could reach, nothing to poll for. `sh`
//! puts our stdin and stdout on fds 3 and 4 (`exec ... 3<&0 4>&1`), so no
//! unsafe `pre_exec` is needed.
//!
//! The browser runs as root with `--headless=new --no-sandbox` and a fresh
//! profile in a temporary directory, in its own process group, which is
//! killed (every renderer and helper with it) when the [`Browser`] drops.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    messages: Receiver<Value>,
    next_id: u64,
    /// Every event received so far (each carries its `sessionId`).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// One tab, attached with its own session (`Target.attachToTarget` with
/// `flatten`).
pub struct Tab {
    pub session: String,
}

impl Browser {
    /// Starts Chromium on a blank page (`None`: it is not installed).
    pub fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() {
            return None;
        }
        let profile = tempfile::Builder::new()
            .prefix("vmscope-chromium-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(profile.path().join("stderr.log")).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>&2")
            .arg(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--remote-debugging-pipe",
                "--disable-gpu",
                "--disable-breakpad",
                "--disable-crash-reporter",
                "--no-first-run",
                "--no-default-browser-check",
                "--no-proxy-server",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-features=Translate,MediaRouter,OptimizationHints",
                "--hide-scrollbars",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // Its own group: dropping kills every helper process with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, messages) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        Some(Browser {
            child,
            stdin,
            messages,
            next_id: 1,
            events: Vec::new(),
            _profile: profile,
        })
    }

    /// What the browser wrote to stderr (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._profile.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends one command (to the browser, or to `session`'s tab) and waits
    /// for its answer; events meanwhile are kept in [`Browser::events`].
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.stdin
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: writing to chromium: {e}\n{}", self.log()));
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(v) if v["id"] == id => {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v["result"].clone();
                }
                Ok(v) => {
                    if v.get("method").is_some() {
                        self.events.push(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no answer in 30 s"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{method}: chromium exited: {}", self.log())
                }
            }
        }
    }

    /// Takes the events that arrived without waiting for a command.
    pub fn drain(&mut self) {
        while let Ok(v) = self.messages.try_recv() {
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// A new tab on about:blank, with Page, Runtime, Log and Network events
    /// on, and `headers` sent with every request (none: the browser's own).
    pub fn new_tab(&mut self) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            self.call(Some(&session), domain, json!({}));
        }
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        Tab { session }
    }

    pub fn navigate(&mut self, tab: &Tab, url: &str) {
        let r = self.call(Some(&tab.session), "Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
    }

    /// Evaluates `expr` in the tab and returns its value (JSON).
    pub fn eval(&mut self, tab: &Tab, expr: &str) -> Value {
        let r = self.call(
            Some(&tab.session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it returns something other than null/false.
    pub fn wait_for(&mut self, tab: &Tab, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(tab, expr);
            if !(v.is_null() || v == json!(false)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("{what}: not after 30 s ({expr})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A real mouse click (pressed and released) in the middle of the
    /// element `selector` matches, scrolled into view first.
    pub fn click(&mut self, tab: &Tab, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let at = self.eval(
            tab,
            &format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ),
        );
        let (x, y) = (
            at[0]
                .as_f64()
                .unwrap_or_else(|| panic!("no element {selector}")),
            at[1].as_f64().unwrap(),
        );
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                Some(&tab.session),
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self, tab: &Tab) -> Vec<u8> {
        use base64::Engine as _;
        let m = self.call(Some(&tab.session), "Page.getLayoutMetrics", json!({}));
        let size = &m["cssContentSize"];
        let r = self.call(
            Some(&tab.session),
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }

    /// The events of `tab` named `method`.
    pub fn events_of<'a>(
        &'a self,
        tab: &'a Tab,
        method: &'a str,
    ) -> impl Iterator<Item = &'a Value> {
        self.events
            .iter()
            .filter(move |e| e["sessionId"] == tab.session.as_str() && e["method"] == method)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
