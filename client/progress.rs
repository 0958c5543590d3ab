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
            Display::Bars(Bars::new(ProgressDrawTarget::stderr()))
        } else {
            Display::Lines
        }
    }

    pub fn show(&mut self, event: &api::GenerateEvent) {
        match self {
            Display::Json => println!("{}", output::json_line(&output::event_json(event))),
            Display::Bars(bars) => bars.show(event),
            Display::Lines => {
                if let Some(line) = line(event) {
                    eprintln!("[{:>3}%] {line}", event.progress);
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

/// Longest text of a bar, in characters: a bar is one line of the terminal.
const MAX_BAR_TEXT: usize = 80;

/// Server text as it goes in a bar's prefix or message: safe to print ([`for_terminal`]), one
/// line (a line break or tab in a bar tears the bars apart) and bounded.
fn bar_text(text: &str) -> String {
    let line: String = for_terminal(text)
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    match line.char_indices().nth(MAX_BAR_TEXT) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// [`describe`], safe to print.
fn line(event: &api::GenerateEvent) -> Option<String> {
    describe(event).map(|line| for_terminal(&line).into_owned())
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
            "  {} done in {} ms: {}{}",
            e.agent,
            output::millis(e.duration.as_ref()),
            e.summary,
            cached_calls(e)
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

/// " (3/7 cached)" when the cache answered some of an agent's calls; nothing otherwise
/// (`cache_hit` alone hides a partial hit).
fn cached_calls(e: &api::AgentCompleted) -> String {
    if e.cached_calls == 0 {
        return String::new();
    }
    format!(" ({}/{} cached)", e.cached_calls, e.calls)
}

pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    phases: HashMap<String, ProgressBar>,
    running: HashMap<String, Vec<String>>,
}

impl Bars {
    /// Bars drawn to `target` (stderr; hidden in tests, which read the bars' text back).
    fn new(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
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
                    bar_text(&e.topic),
                    bar_text(&event.job_id)
                ));
                for phase in &e.phases {
                    let bar = self
                        .multi
                        .add(ProgressBar::new(phase.agents.len().max(1) as u64));
                    bar.set_style(Self::phase_style());
                    bar.set_prefix(bar_text(&phase.phase));
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
                    bar.set_message(bar_text(&running.join(", ")));
                }
            }
            Event::AgentCompleted(e) => {
                let running = self.running.entry(e.phase.clone()).or_default();
                running.retain(|a| a != &e.agent);
                if let Some(bar) = self.phases.get(&e.phase) {
                    bar.inc(1);
                    bar.set_message(bar_text(&running.join(", ")));
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
            Event::Warning(_) => {
                if let Some(line) = line(event) {
                    self.multi.suspend(|| eprintln!("{line}"));
                }
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const HOSTILE: [&str; 3] = ["\x1b]52;c;AAAA\x07", "\x1b[2J", "\u{9b}31m"];

    fn hostile(name: &str) -> String {
        format!("{name}{}\nsecond line\u{202e}", HOSTILE.concat())
    }

    fn event(event: Event) -> api::GenerateEvent {
        api::GenerateEvent {
            job_id: hostile("job"),
            event: Some(event),
            ..Default::default()
        }
    }

    /// Terminal controls (ESC, BEL, C1, bidi overrides) or a line break.
    fn unsafe_char(text: &str) -> Option<char> {
        text.chars()
            .find(|&c| dakota::safe_text::is_hidden(c) || c == '\n')
    }

    #[test]
    fn a_finished_agent_says_how_many_of_its_calls_the_cache_answered() {
        let done = |calls, cached_calls| {
            describe(&event(Event::AgentCompleted(api::AgentCompleted {
                agent: "web_researcher".into(),
                summary: "9 results".into(),
                calls,
                cached_calls,
                ..Default::default()
            })))
            .unwrap()
        };
        assert!(
            done(7, 3).ends_with("9 results (3/7 cached)"),
            "{}",
            done(7, 3)
        );
        assert!(done(7, 0).ends_with("9 results"), "{}", done(7, 0));
        assert!(done(0, 0).ends_with("9 results"));
    }

    #[test]
    fn bar_text_of_hostile_events_is_one_line_without_controls() {
        let (phase, agent) = (hostile("draft"), hostile("writer"));
        let events = [
            Event::JobStarted(api::JobStarted {
                topic: hostile("topic"),
                phases: vec![api::PlannedPhase {
                    phase: phase.clone(),
                    agents: vec![agent.clone()],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            Event::PhaseStarted(api::PhaseStarted {
                phase: phase.clone(),
                iteration: 1,
            }),
            Event::AgentStarted(api::AgentStarted {
                agent: agent.clone(),
                phase: phase.clone(),
                provider: hostile("provider"),
                model: hostile("model"),
            }),
            Event::Warning(api::Warning {
                code: hostile("CODE"),
                message: hostile("message"),
                phase: phase.clone(),
                agent: agent.clone(),
            }),
            Event::AgentCompleted(api::AgentCompleted {
                agent: agent.clone(),
                phase: phase.clone(),
                summary: hostile("summary"),
                ..Default::default()
            }),
            Event::PhaseCompleted(api::PhaseCompleted {
                phase: phase.clone(),
                ..Default::default()
            }),
        ];
        let mut bars = Bars::new(ProgressDrawTarget::hidden());
        for kind in events {
            let event = event(kind);
            bars.show(&event);
            // Agents run: their names are in the phase's bar.
            if matches!(event.event, Some(Event::AgentStarted(_))) {
                let messages: Vec<_> = bars.phases.values().map(|b| b.message()).collect();
                assert!(
                    messages.iter().any(|m| m.contains("writer")),
                    "{messages:?}"
                );
            }
            for bar in bars.phases.values().chain([&bars.overall]) {
                for text in [bar.prefix(), bar.message()] {
                    assert_eq!(unsafe_char(&text), None, "{text:?} after {event:?}");
                }
            }
            // Lines (and warnings between the bars) keep line breaks, nothing else hidden.
            let line = line(&event).unwrap_or_default();
            let hidden = line
                .chars()
                .find(|&c| dakota::safe_text::is_hidden(c) && c != '\n');
            assert_eq!(hidden, None, "{line:?}");
        }
        assert_eq!(bars.phases.len(), 1);
    }
}
