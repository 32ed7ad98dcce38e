//! The live view of a run on stderr: an indicatif bar with the rate and the errors so far,
//! drawn only when stderr is a terminal (indicatif hides it otherwise, so piping the output or
//! running under CI prints nothing extra).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the workers count while a run goes on; read by the bar (and by a Ctrl-C handler).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Measured requests finished (answered or failed); the warm-up's are not counted, so a
    /// bar of `--requests` fills exactly.
    pub done: AtomicU64,
    /// Of those, failed.
    pub errors: AtomicU64,
}

/// How far a run goes: the bar's length.
#[derive(Clone, Copy, Debug)]
pub enum Extent {
    /// This many requests.
    Requests(u64),
    /// This long.
    Duration(Duration),
}

/// A bar redrawn ten times a second by its own thread until [`Progress::finish`].
pub struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `label` for a run of `extent`, reading `counters`.
    pub fn start(label: &str, extent: Extent, counters: Arc<LiveCounters>) -> Self {
        let len = match extent {
            Extent::Requests(n) => n,
            Extent::Duration(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let template = match extent {
            Extent::Requests(_) => "{prefix:<22} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}",
            Extent::Duration(_) => "{prefix:<22} [{elapsed_precise}] [{bar:30}] {msg}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("#>."));
        }
        bar.set_prefix(label.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = (!bar.is_hidden()).then(|| {
            let (bar, stop) = (bar.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let done = counters.done.load(Ordering::Relaxed);
                    let errors = counters.errors.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_position(match extent {
                        Extent::Requests(_) => done,
                        Extent::Duration(_) => {
                            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
                        }
                    });
                    bar.set_message(format!(
                        "{done} done, {:.0} req/s, {errors} errors",
                        done as f64 / secs
                    ));
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        Self { bar, stop, ticker }
    }

    /// Stops drawing and clears the bar, so the report that follows starts on a clean line.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}
