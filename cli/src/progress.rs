//! Progress output for builds: one solver event stream, three renderers (tty, plain, json).
//!
//! `plain` prints BuildKit-style numbered lines (`#3 [2/5] RUN make`, `#3 0.412 output`,
//! `#3 DONE 1.2s`) for CI logs; `tty` is a live view (one line per running step with its timer
//! and last output, CACHED/DONE/ERROR on completion); `json` prints one event per line.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_solver::{Event, EventKind};

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// tty on a terminal, plain otherwise
    Auto,
    Tty,
    Plain,
    Json,
}

impl ProgressMode {
    /// Resolves `auto` against whether stderr is a terminal.
    pub fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    ProgressMode::Tty
                } else {
                    ProgressMode::Plain
                }
            }
            other => other,
        }
    }
}

/// What the renderer remembers of a step.
struct Step {
    number: usize,
    name: String,
    started: Option<Instant>,
    last_lines: VecDeque<String>,
    partial_line: String,
    bar: Option<ProgressBar>,
    finished: bool,
}

/// Renders events as they come; `finish` prints the summary.
pub struct Renderer {
    mode: ProgressMode,
    steps: HashMap<usize, Step>,
    next_number: usize,
    multi: Option<MultiProgress>,
    build_started: Instant,
    counts: BTreeMap<&'static str, usize>,
}

/// How many log lines of a failed step are kept for the error message.
pub const KEPT_LOG_LINES: usize = 20;

impl Renderer {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = mode.resolve();
        let multi = (mode == ProgressMode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Renderer {
            mode,
            steps: HashMap::new(),
            next_number: 1,
            multi,
            build_started: Instant::now(),
            counts: BTreeMap::new(),
        }
    }

    fn step(&mut self, event: &Event) -> &mut Step {
        let next_number = &mut self.next_number;
        self.steps.entry(event.vertex).or_insert_with(|| {
            let number = *next_number;
            *next_number += 1;
            Step {
                number,
                name: event.name.clone(),
                started: None,
                last_lines: VecDeque::new(),
                partial_line: String::new(),
                bar: None,
                finished: false,
            }
        })
    }

    /// The last output lines of a step, for the error message of a failed build.
    pub fn last_lines(&self, vertex: usize) -> Vec<String> {
        self.steps
            .get(&vertex)
            .map(|step| {
                let mut lines: Vec<String> = step.last_lines.iter().cloned().collect();
                if !step.partial_line.is_empty() {
                    lines.push(step.partial_line.clone());
                }
                lines
            })
            .unwrap_or_default()
    }

    pub fn handle(&mut self, event: &Event) {
        match self.mode {
            ProgressMode::Json => {
                if let Ok(line) = serde_json::to_string(event) {
                    write_stderr(&format!("{line}\n"));
                }
                self.remember_logs(event);
            }
            ProgressMode::Tty => self.handle_tty(event),
            _ => self.handle_plain(event),
        }
        match &event.kind {
            EventKind::Cached => *self.counts.entry("cached").or_default() += 1,
            EventKind::Done { .. } => *self.counts.entry("done").or_default() += 1,
            EventKind::Failed { .. } => *self.counts.entry("failed").or_default() += 1,
            _ => {}
        }
    }

    fn remember_logs(&mut self, event: &Event) -> Vec<String> {
        let EventKind::Log { data, .. } = &event.kind else {
            return Vec::new();
        };
        let step = self.step(event);
        step.partial_line.push_str(data);
        let mut complete = Vec::new();
        while let Some(newline) = step.partial_line.find(['\n', '\r']) {
            let line: String = step.partial_line[..newline].to_string();
            step.partial_line.drain(..=newline);
            if line.is_empty() {
                continue;
            }
            step.last_lines.push_back(line.clone());
            if step.last_lines.len() > KEPT_LOG_LINES {
                step.last_lines.pop_front();
            }
            complete.push(line);
        }
        complete
    }

    fn handle_plain(&mut self, event: &Event) {
        let lines = self.remember_logs(event);
        let step = self.step(event);
        let number = step.number;
        match &event.kind {
            EventKind::Key { .. } => {}
            EventKind::Started => {
                step.started = Some(Instant::now());
                write_stderr(&format!("\n#{number} {}\n", step.name));
            }
            EventKind::Cached => {
                write_stderr(&format!("\n#{number} {}\n#{number} CACHED\n", step.name));
            }
            EventKind::Log { .. } => {
                let elapsed = step.started.map(|s| s.elapsed()).unwrap_or_default();
                let mut text = String::new();
                for line in lines {
                    text.push_str(&format!("#{number} {:.3} {line}\n", elapsed.as_secs_f64()));
                }
                write_stderr(&text);
            }
            EventKind::Done { duration } => {
                write_stderr(&format!("#{number} DONE {}\n", seconds(*duration)));
            }
            EventKind::Failed { error } => {
                write_stderr(&format!("#{number} ERROR: {error}\n"));
            }
            EventKind::Canceled => write_stderr(&format!("#{number} CANCELED\n")),
        }
    }

    fn handle_tty(&mut self, event: &Event) {
        self.remember_logs(event);
        let multi = self.multi.clone();
        let step = self.step(event);
        let number = step.number;
        let Some(multi) = multi else { return };
        match &event.kind {
            EventKind::Started => {
                step.started = Some(Instant::now());
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(" => {msg} {elapsed:.dim}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(format!("[#{number}] {}", step.name));
                bar.enable_steady_tick(Duration::from_millis(100));
                step.bar = Some(bar);
            }
            EventKind::Log { .. } => {
                if let (Some(bar), Some(line)) = (&step.bar, step.last_lines.back()) {
                    let line: String = line.chars().take(100).collect();
                    bar.set_message(format!("[#{number}] {}\n     {line}", step.name));
                }
            }
            EventKind::Cached => {
                step.finished = true;
                let _ = multi.println(format!(" => CACHED {}", step.name));
            }
            EventKind::Done { duration } => {
                step.finished = true;
                if let Some(bar) = step.bar.take() {
                    bar.finish_and_clear();
                }
                let _ = multi.println(format!(" => {} {}", step.name, seconds(*duration)));
            }
            EventKind::Failed { error } => {
                step.finished = true;
                if let Some(bar) = step.bar.take() {
                    bar.finish_and_clear();
                }
                let _ = multi.println(format!(" => ERROR {}: {error}", step.name));
            }
            EventKind::Canceled => {
                step.finished = true;
                if let Some(bar) = step.bar.take() {
                    bar.finish_and_clear();
                }
                let _ = multi.println(format!(" => CANCELED {}", step.name));
            }
            EventKind::Key { .. } => {}
        }
    }

    /// Clears live bars and prints the summary line.
    pub fn finish(&mut self) {
        for step in self.steps.values_mut() {
            if let Some(bar) = step.bar.take() {
                bar.finish_and_clear();
            }
        }
        if self.mode == ProgressMode::Json {
            return;
        }
        let elapsed = self.build_started.elapsed();
        let count = |name| self.counts.get(name).copied().unwrap_or(0);
        write_stderr(&format!(
            "\n{} steps: {} ran, {} cached, {} failed in {}\n",
            count("done") + count("cached") + count("failed"),
            count("done"),
            count("cached"),
            count("failed"),
            seconds(elapsed)
        ));
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn write_stderr(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
}
