//! Progress display for `dakota generate` / `watch`: one bar per phase on a terminal, one
//! line per step otherwise, one JSON object per event with `--json`.
use std::{collections::HashMap, io::IsTerminal};

use dakota::{
    api::{self, generate_event::Event},
    output,
    safe_text::for_terminal,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub enum Display {
    Json,
    Bars(Bars),
    Lines,
}

impl Display {
    pub fn new(json: bool) -> Self {
        if json {
            Display::Json
        } else if std::io::stderr().is_terminal() {
            Display::Bars(Bars::default())
        } else {
            Display::Lines
        }
    }

    pub fn show(&mut self, event: &api::GenerateEvent) {
        match self {
            Display::Json => println!("{}", output::event_json(event)),
            Display::Bars(bars) => bars.show(event),
            Display::Lines => {
                if let Some(line) = describe(event) {
                    eprintln!("[{:>3}%] {}", event.progress, for_terminal(&line));
                }
            }
        }
    }

    /// A message that must not tear the bars.
    pub fn note(&self, message: &str) {
        let message = for_terminal(message);
        match self {
            Display::Bars(bars) => bars.multi.suspend(|| eprintln!("{message}")),
            _ => eprintln!("{message}"),
        }
    }

    /// Stops the bars, leaving them on screen as a record of the run.
    pub fn finish(&mut self) {
        if let Display::Bars(bars) = self {
            bars.overall.finish();
            for bar in bars.phases.values().filter(|b| !b.is_finished()) {
                bar.abandon();
            }
        }
    }
}

/// One line describing an event, for logs and non-terminal output (deltas are skipped).
fn describe(event: &api::GenerateEvent) -> Option<String> {
    Some(match event.event.as_ref()? {
        Event::JobStarted(e) => format!(
            "job {} started: \"{}\" ({} words), phases: {}",
            event.job_id,
            e.topic,
            e.word_count,
            e.phases
                .iter()
                .map(|p| p.phase.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        ),
        Event::PhaseStarted(e) => format!("phase {} started", e.phase),
        Event::AgentStarted(e) => format!("  {} started ({} / {})", e.agent, e.provider, e.model),
        Event::AgentCompleted(e) => format!(
            "  {} done in {} ms: {}",
            e.agent,
            output::millis(e.duration.as_ref()),
            e.summary
        ),
        Event::ContentDelta(_) => return None,
        Event::Warning(e) => format!("warning {}: {}", e.code, e.message),
        Event::PhaseCompleted(e) => format!(
            "phase {} done in {} ms",
            e.phase,
            output::millis(e.duration.as_ref())
        ),
        Event::Completed(_) => "completed".to_string(),
        Event::Failed(e) => format!(
            "failed ({}): {}",
            output::code_name(tonic::Code::from_i32(e.code)),
            e.message
        ),
    })
}

pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    phases: HashMap<String, ProgressBar>,
    running: HashMap<String, Vec<String>>,
}

impl Default for Bars {
    fn default() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(100));
        overall.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<14} [{bar:30}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix("job");
        overall.enable_steady_tick(std::time::Duration::from_millis(120));
        Self {
            multi,
            overall,
            phases: HashMap::new(),
            running: HashMap::new(),
        }
    }
}

impl Bars {
    fn phase_style() -> ProgressStyle {
        ProgressStyle::with_template("  {prefix:<14} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    fn show(&mut self, event: &api::GenerateEvent) {
        self.overall.set_position(u64::from(event.progress));
        let Some(kind) = &event.event else { return };
        match kind {
            Event::JobStarted(e) => {
                self.overall.set_message(format!(
                    "{} ({})",
                    for_terminal(&e.topic),
                    for_terminal(&event.job_id)
                ));
                for phase in &e.phases {
                    let bar = self
                        .multi
                        .add(ProgressBar::new(phase.agents.len().max(1) as u64));
                    bar.set_style(Self::phase_style());
                    bar.set_prefix(phase.phase.clone());
                    bar.set_message(if phase.conditional {
                        "only if needed"
                    } else {
                        "waiting"
                    });
                    self.phases.insert(phase.phase.clone(), bar);
                }
            }
            Event::PhaseStarted(e) => {
                if let Some(bar) = self.phases.get(&e.phase) {
                    bar.reset();
                    bar.set_message(if e.iteration > 1 {
                        format!("pass {}", e.iteration)
                    } else {
                        "running".into()
                    });
                }
            }
            Event::AgentStarted(e) => {
                let running = self.running.entry(e.phase.clone()).or_default();
                running.push(e.agent.clone());
                if let Some(bar) = self.phases.get(&e.phase) {
                    bar.set_message(running.join(", "));
                }
            }
            Event::AgentCompleted(e) => {
                let running = self.running.entry(e.phase.clone()).or_default();
                running.retain(|a| a != &e.agent);
                if let Some(bar) = self.phases.get(&e.phase) {
                    bar.inc(1);
                    bar.set_message(running.join(", "));
                }
            }
            Event::PhaseCompleted(e) => {
                if let Some(bar) = self.phases.get(&e.phase) {
                    let len = bar.length().unwrap_or(1);
                    bar.set_position(len);
                    bar.finish_with_message(format!(
                        "done in {} ms",
                        output::millis(e.duration.as_ref())
                    ));
                }
            }
            Event::Warning(e) => self.multi.suspend(|| {
                eprintln!(
                    "warning {}: {}",
                    for_terminal(&e.code),
                    for_terminal(&e.message)
                )
            }),
            Event::ContentDelta(_) => {}
            Event::Completed(_) => {
                for bar in self.phases.values().filter(|b| !b.is_finished()) {
                    bar.set_position(0);
                    bar.finish_with_message("not needed");
                }
            }
            Event::Failed(_) => {}
        }
    }
}
