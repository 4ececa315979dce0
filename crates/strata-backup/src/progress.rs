//! Progress of a backup or restore on standard error: a line redrawn in place on a
//! terminal, a plain line per table otherwise (logs, CI), nothing when quiet.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Clone)]
pub struct Progress {
    inner: Option<Arc<Mutex<State>>>,
}

struct State {
    terminal: bool,
    started: Instant,
    last_drawn: Option<Instant>,
    /// Rows expected in all, when known.
    total: u64,
    /// Rows of finished tables.
    finished: u64,
}

impl Progress {
    /// Reports on standard error, redrawing a line if it is a terminal.
    pub fn stderr() -> Self {
        let state = State {
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_drawn: None,
            total: 0,
            finished: 0,
        };
        Progress { inner: Some(Arc::new(Mutex::new(state))) }
    }

    /// Reports nothing (tests, library use).
    pub fn quiet() -> Self {
        Progress { inner: None }
    }

    pub(crate) fn expect(&self, rows_per_table: &[u64]) {
        if let Some(state) = &self.inner {
            state.lock().total = rows_per_table.iter().sum();
        }
    }

    pub(crate) fn verified(&self, rows: u64) {
        if let Some(state) = &self.inner {
            let state = state.lock();
            eprintln!("verified {rows} rows against the manifest in {:.1?}", state.started.elapsed());
        }
    }

    /// `rows` of `table` so far.
    pub(crate) fn rows(&self, table: &str, rows: u64) {
        let Some(state) = &self.inner else { return };
        let mut state = state.lock();
        if !state.terminal || state.last_drawn.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        state.last_drawn = Some(Instant::now());
        let done = state.finished + rows;
        let percent = (done * 100).checked_div(state.total).unwrap_or(0).min(100);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{percent:>3}% {table}: {rows} rows ({done} of {} in all)", state.total);
        let _ = err.flush();
    }

    pub(crate) fn table_done(&self, table: &str, rows: u64) {
        let Some(state) = &self.inner else { return };
        let mut state = state.lock();
        state.finished += rows;
        let prefix = if state.terminal { "\r\x1b[2K" } else { "" };
        eprintln!("{prefix}{table}: {rows} rows ({:.1?})", state.started.elapsed());
    }
}
