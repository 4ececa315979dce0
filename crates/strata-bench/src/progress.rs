//! The live status line on stderr: rewritten in place on a terminal, plain lines otherwise (so
//! CI logs stay readable).

use std::io::{IsTerminal, Write};

pub struct Progress {
    tty: bool,
    quiet: bool,
    dirty: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self { tty: std::io::stderr().is_terminal(), quiet, dirty: false }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Shows `line` as the current status.
    pub fn update(&mut self, line: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Prints a line that stays, clearing any status line first.
    pub fn say(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.dirty {
            let _ = write!(err, "\r\x1b[2K");
            self.dirty = false;
        }
        let _ = writeln!(err, "{line}");
    }

    pub fn finish(&mut self) {
        if self.dirty {
            let _ = writeln!(std::io::stderr());
            self.dirty = false;
        }
    }
}

/// `[#######.....]`, `width` cells.
pub fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).map_or(width, |f| f.min(width));
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Microseconds as a short human figure: 850µs, 12.3ms, 1.52s.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes}B") } else { format!("{value:.1}{}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bar(5, 10, 10), "[#####.....]");
        assert_eq!(bar(0, 0, 4), "[####]");
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(12_345), "12.35ms");
        assert_eq!(fmt_us(1_520_000), "1.52s");
        assert_eq!(fmt_bytes(512), "512B");
        assert_eq!(fmt_bytes(1536), "1.5KiB");
    }
}
