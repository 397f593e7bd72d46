//! The live progress line on stderr, about once a second, shown only when
//! stderr is a terminal (a redirected stderr gets no control codes).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::stats::Shared;

/// A running progress line; [`Progress::finish`] clears it.
#[derive(Debug)]
pub struct Progress {
    task: Option<(JoinHandle<()>, ProgressBar)>,
}

impl Progress {
    /// Starts the progress line if stderr is a terminal.
    pub fn start(shared: Arc<Shared>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let w = shared.window;
        let total = w.end.duration_since(w.start).as_secs_f64().ceil() as u64;
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(2));
        let style = ProgressStyle::with_template("{elapsed:>4} [{bar:24}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let (req, err) = shared.live();
                let rate = (req - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
                last = (req, now);
                let phase = if now < w.measure { "warm-up  " } else { "" };
                b.set_position(now.duration_since(w.start).as_secs());
                b.set_message(format!(
                    "{phase}{req} requests  {rate:.0} req/s  {err} errors"
                ));
            }
        });
        Progress {
            task: Some((task, bar)),
        }
    }

    /// Stops and clears the line.
    pub fn finish(self) {
        if let Some((task, bar)) = self.task {
            task.abort();
            bar.finish_and_clear();
        }
    }
}
