//! A small load generator: threads sending `GET /api/orders` through the gateway's outbound
//! port (127.0.1.2:15001) as an app behind the gateway would, half of them on one kept-alive
//! connection, half on a fresh connection per request. Every response must be the orders
//! app's 200; anything else — another status, a reset, a timeout — is a failed request.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{GATEWAY, ORDERS_URL, addr, read_response};

/// What the load saw.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, with when they happened.
    pub failures: Vec<String>,
    pub max_latency: Duration,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.failures.extend(o.failures);
        self.max_latency = self.max_latency.max(o.max_latency);
    }
}

/// Running load; [`Load::finish`] stops it and returns what it saw.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Stats>>,
    started: Instant,
}

impl Load {
    pub fn start(threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..threads)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || worker(i % 2 == 0, &stop, started))
            })
            .collect();
        Load {
            stop,
            threads,
            started,
        }
    }

    pub fn finish(mut self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Stats::default();
        for t in std::mem::take(&mut self.threads) {
            all.merge(t.join().expect("load thread"));
        }
        eprintln!(
            "[load] {} ok, {} failed in {:.1}s, slowest {} ms{}",
            all.ok,
            all.failed,
            self.started.elapsed().as_secs_f64(),
            all.max_latency.as_millis(),
            if all.failures.is_empty() {
                String::new()
            } else {
                format!("; first failures: {:?}", all.failures)
            }
        );
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A panicking test still stops its threads.
        self.stop.store(true, Ordering::SeqCst);
    }
}

const TARGET: &str = "/api/orders";

fn worker(keep_alive: bool, stop: &AtomicBool, t0: Instant) -> Stats {
    let mut st = Stats::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let host = ORDERS_URL.trim_start_matches("http://");
    while !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        let result = (|| -> Result<(), String> {
            if conn.is_none() {
                let tcp = TcpStream::connect_timeout(&addr(GATEWAY, 15001), Duration::from_secs(5))
                    .map_err(|e| format!("connect: {e}"))?;
                tcp.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
                tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                conn = Some(BufReader::new(tcp));
            }
            let c = conn.as_mut().ok_or("no connection")?;
            let close = if keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            };
            write!(
                c.get_mut(),
                "GET {ORDERS_URL}{TARGET} HTTP/1.1\r\nHost: {host}\r\n{close}\r\n"
            )
            .map_err(|e| format!("write: {e}"))?;
            let r = read_response(c)?;
            let server_closes = r
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if !keep_alive || server_closes {
                conn = None;
            }
            if r.status != 200 || r.field("app") != Some("production/orders") {
                return Err(format!("status {}: {}", r.status, r.body.trim()));
            }
            Ok(())
        })();
        st.max_latency = st.max_latency.max(start.elapsed());
        match result {
            Ok(()) => st.ok += 1,
            Err(e) => {
                conn = None;
                st.failed += 1;
                if st.failures.len() < 5 {
                    let kind = if keep_alive { "kept-alive" } else { "fresh" };
                    st.failures
                        .push(format!("t={:.2}s {kind}: {e}", t0.elapsed().as_secs_f64()));
                }
            }
        }
        // A steady rate, not a CPU hog: the mesh under test shares two cores with this.
        std::thread::sleep(Duration::from_millis(5));
    }
    st
}
