//! A webhook receiver for tests: every JSON body POSTed to it, on a small
//! tokio runtime of its own (the test thread blocks in polls). What a test
//! looks for in the bodies is its own (`impl Hook` in the test module).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use serde_json::Value;

pub struct Hook {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    _rt: tokio::runtime::Runtime,
}

async fn receive(State(bodies): State<Arc<Mutex<Vec<Value>>>>, body: Bytes) -> &'static str {
    if let Ok(v) = serde_json::from_slice(&body) {
        bodies.lock().unwrap().push(v);
    }
    "ok"
}

impl Hook {
    /// Listens on a free loopback port; `url` ends in `path`.
    pub fn start(path: &str) -> Hook {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let app = Router::new().fallback(receive).with_state(bodies.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Hook {
            url,
            bodies,
            _rt: rt,
        }
    }
}
