//! The revision loop, and what makes `completed` mean that the article contract holds: a
//! draft that still misses it after the revisions is completed by code from the offline
//! writer's draft of the same brief, or replaced by that draft, with a
//! `CONTENT_WRITER_DEGRADED` warning; the final draft is analysed again.
use super::*;
use crate::agents::Degraded;

impl JobRun {
    /// Revisions while the contract or the fact check fails and a revision could help, at
    /// most `max` of them: the writer repairs, then the draft is analysed again. A revision
    /// that does not reduce the problems ends the loop (another would not help either: a
    /// small model cut off again, say), and one with more problems than its draft is not
    /// kept.
    pub(super) async fn revise(
        &self,
        synthesis: &Arc<Synthesis>,
        sources: &Arc<Vec<SourceDoc>>,
        mut analysed: Analysed,
        max: u32,
    ) -> Result<(Analysed, Vec<contract::Problem>, u32), PipelineError> {
        let target = self.request().word_count;
        let mut problems = problems(&analysed.draft, sources, target, &analysed.fact_check);
        let mut revisions = 0;
        while needs_revision(&problems, &analysed.draft) && revisions < max && self.revision_fits()
        {
            revisions += 1;
            let brief = WritingBrief {
                synthesis: synthesis.clone(),
                revision: Some(Revision {
                    iteration: revisions + 1,
                    previous: analysed.draft.markdown.clone(),
                    problems: problems.clone(),
                }),
            };
            let revised = self
                .phase(Phase::Revision, revisions, async {
                    match self
                        .write(Phase::Revision, revisions + 1, &brief, sources)
                        .await
                    {
                        Ok(revised) => {
                            let analysed = self.analyse(Phase::Revision, 4, revised, sources);
                            analysed.await.map(Some)
                        }
                        Err(error) => self.revision_failed(error).map(|()| None),
                    }
                })
                .await?;
            let Some(revised) = revised else { break };
            let found = self::problems(&revised.draft, sources, target, &revised.fact_check);
            let improved = found.len() < problems.len();
            if found.len() <= problems.len() {
                (analysed, problems) = (revised, found);
            }
            if !improved {
                tracing::info!(revisions, "a revision did not reduce the problems; no more");
                break;
            }
        }
        Ok((analysed, problems, revisions))
    }

    /// A revision the model could not write (unreachable, or nothing usable): the draft in
    /// hand is still an article, so the job goes on with it and a warning. Anything else
    /// (a cancelled job, a failing knowledge base, a bug) fails the job.
    fn revision_failed(&self, error: PipelineError) -> Result<(), PipelineError> {
        match error {
            PipelineError::Agent { source, .. }
                if source.is_llm_failure() && !self.cx.cancel.is_cancelled() =>
            {
                self.warn(
                    Phase::Revision,
                    Some(AgentName::ContentWriter),
                    WarningCode::Degraded(AgentName::ContentWriter),
                    format!("the revision failed ({source}); the draft before it stands"),
                );
                Ok(())
            }
            error => Err(error),
        }
    }

    /// The draft, if its structure meets the article contract; else the draft completed by
    /// code from the offline writer's draft of the same brief, or that draft itself
    /// (whichever meets the contract, the model's own text first), analysed again, with a
    /// `CONTENT_WRITER_DEGRADED` warning. The fact check's unsupported claims are no
    /// contract problem: they stay in its report.
    pub(super) async fn meet_contract(
        &self,
        synthesis: &Arc<Synthesis>,
        sources: &Arc<Vec<SourceDoc>>,
        (analysed, problems): (Analysed, Vec<contract::Problem>),
        revisions: u32,
    ) -> Result<(Analysed, Vec<contract::Problem>), PipelineError> {
        let target = self.request().word_count;
        let missed = missed(&problems, &analysed.draft);
        if missed.is_empty() {
            return Ok((analysed, problems));
        }
        let fallback = self
            .agents
            .offline
            .as_ref()
            .map(|o| o.content_writer.clone());
        let (Some(offline), false) = (fallback, structural(&missed).is_empty()) else {
            // CONTRACT_NOT_MET remains for two cases, and says which: a draft whose only
            // miss is its length (a whole article, kept rather than swapped for the offline
            // writer's, which is all code could put in its place); and an offline writer's
            // own draft, when the sources support fewer sections than the contract asks.
            self.contract_not_met(revisions, &missed);
            return Ok((analysed, problems));
        };
        let brief = WritingBrief {
            synthesis: synthesis.clone(),
            revision: None,
        };
        // The offline draft is material here; only the article chosen reaches the client.
        let quiet = AgentContext {
            deltas: Arc::new(|_: &str| {}),
            ..self.cx.clone()
        };
        let by = (offline.provider().to_string(), offline.model().to_string());
        let offline_draft =
            offline
                .run(&quiet, &brief)
                .await
                .map_err(|source| PipelineError::Agent {
                    agent: AgentName::ContentWriter.as_str(),
                    source,
                })?;
        let offline_draft = self.rendered(Phase::Revision, offline_draft.value, sources);
        let Some((draft, message)) =
            self.replacement(&analysed.draft, offline_draft, sources, &missed)
        else {
            self.contract_not_met(revisions, &missed);
            return Ok((analysed, problems));
        };
        let replacing = Replacing {
            output: Mutex::new(Some(replacement_output(draft, message, by.clone()))),
            by,
        };
        // The final text replaces what the writer streamed.
        self.writer_iteration.fetch_add(1, Ordering::Relaxed);
        let analysed = self
            .phase(Phase::Revision, revisions + 1, async {
                let writer = AgentName::ContentWriter;
                let draft = self
                    .agent(Phase::Revision, 4, writer, &replacing, &brief)
                    .await?;
                self.analyse(Phase::Revision, 4, draft, sources).await
            })
            .await?;
        let problems = self::problems(&analysed.draft, sources, target, &analysed.fact_check);
        let missed = self::missed(&problems, &analysed.draft);
        if !missed.is_empty() {
            self.contract_not_met(revisions, &missed);
        }
        Ok((analysed, problems))
    }

    /// The model's draft completed from `offline`, or `offline` itself: the first that meets
    /// the contract, else the one that misses least, if it misses less than the draft does;
    /// with the warning's message.
    fn replacement(
        &self,
        draft: &Draft,
        offline: Draft,
        sources: &[SourceDoc],
        missed: &[contract::Problem],
    ) -> Option<(Draft, String)> {
        let target = self.request().word_count;
        let list = |problems: &[contract::Problem]| -> String {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            list.join("; ")
        };
        let why = format!(
            "the writer's draft missed the article contract ({})",
            list(missed)
        );
        let (completed, taken) = salvage::complete(&draft.markdown, &offline.markdown);
        let completed = Draft {
            markdown: completed,
            reachable_words: offline.reachable_words,
            cut_off: false,
        };
        let candidates = [
            (
                completed,
                format!(
                    "{why}; completed by code with the offline writer's {}",
                    taken.join(", ")
                ),
            ),
            (
                offline,
                format!("{why}; the offline writer's draft replaced it"),
            ),
        ];
        // Structure first, then length: the first candidate that misses least.
        let score = |d: &Draft| {
            let missed = self::missed(&contract::check(&d.markdown, sources, target), d);
            (structural(&missed).len(), missed.len())
        };
        let best = candidates
            .into_iter()
            .map(|(d, message)| (score(&d), d, message))
            .min_by_key(|(score, _, _)| *score)?;
        (best.0.0 < structural(missed).len()).then_some((best.1, best.2))
    }

    /// The warning that the article still misses the contract: only when no draft that
    /// meets it could be made (see [`JobRun::meet_contract`]).
    fn contract_not_met(&self, revisions: u32, missed: &[contract::Problem]) {
        let list: Vec<String> = missed.iter().map(ToString::to_string).collect();
        self.warn(
            Phase::Revision,
            Some(AgentName::ContentWriter),
            WarningCode::ContractNotMet,
            format!(
                "after {revisions} revision(s) the article still has problems: {}",
                list.join("; ")
            ),
        );
    }
}

/// The replacement draft as the writer's output: produced by the offline writer (`by`:
/// its provider and model), a degraded part with its warning.
fn replacement_output(draft: Draft, message: String, by: (String, String)) -> AgentOutput<Draft> {
    let mut output = AgentOutput::local(
        draft,
        "the article contract met by the offline writer's draft",
    );
    output.warnings.push((
        WarningCode::Degraded(AgentName::ContentWriter),
        message.clone(),
    ));
    output.degraded = Some(Degraded {
        cause: "contract_not_met",
        message,
        provider: by.0,
        model: by.1,
    });
    output
}

/// The writer's output decided by [`JobRun::meet_contract`], as an agent, so that it has
/// its events and its place in the run metrics; its text reaches the client as deltas.
struct Replacing {
    output: Mutex<Option<AgentOutput<Draft>>>,
    /// Provider and model of the offline writer.
    by: (String, String),
}

impl Agent<WritingBrief, Draft> for Replacing {
    fn provider(&self) -> &str {
        &self.by.0
    }
    fn model(&self) -> &str {
        &self.by.1
    }
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        _brief: &'a WritingBrief,
    ) -> crate::agents::AgentFuture<'a, Draft> {
        let output = lock(&self.output).take().ok_or_else(|| {
            AgentError::Internal("the replacement draft was asked for twice".into())
        });
        if let Ok(output) = &output {
            for paragraph in output.value.markdown.split_inclusive("\n\n") {
                (cx.deltas)(paragraph);
            }
        }
        Box::pin(std::future::ready(output))
    }
}

/// Whether a revision could fix something: not a draft that is short only because the
/// sources ran out (already reported as `INSUFFICIENT_MATERIAL`).
fn needs_revision(problems: &[contract::Problem], draft: &Draft) -> bool {
    problems.iter().any(|problem| match problem {
        contract::Problem::WordCount { actual, target } => {
            draft.reachable_words.is_none() || actual > target
        }
        _ => true,
    })
}

/// The problems that are the article contract's (not the fact check's unsupported claims),
/// less a length the sources cannot reach.
fn missed(problems: &[contract::Problem], draft: &Draft) -> Vec<contract::Problem> {
    problems
        .iter()
        .filter(|problem| match problem {
            contract::Problem::UnsupportedClaim(_) => false,
            problem => needs_revision(std::slice::from_ref(problem), draft),
        })
        .cloned()
        .collect()
}

/// The problems of the article's structure (title, sections, citations, a cut-off end):
/// all but the length.
fn structural(missed: &[contract::Problem]) -> Vec<&contract::Problem> {
    missed
        .iter()
        .filter(|p| !matches!(p, contract::Problem::WordCount { .. }))
        .collect()
}

/// Contract violations plus the claims the fact check found unsupported.
fn problems(
    draft: &Draft,
    sources: &[SourceDoc],
    target: usize,
    fact_check: &api::FactCheckReport,
) -> Vec<contract::Problem> {
    let mut problems = contract::check(&draft.markdown, sources, target);
    if draft.cut_off {
        problems.push(contract::Problem::CutOff);
    }
    problems.extend(
        fact_check
            .claims
            .iter()
            .filter(|c| c.verdict() == api::Verdict::Unsupported)
            .map(|c| contract::Problem::UnsupportedClaim(c.text.clone())),
    );
    problems
}
