//! A job that will not fit its deadline says so early: the job's own pace so far (how long
//! its writing and analysis took at this model's speed) says what a revision or the
//! distribution would take, and when the deadline leaves less, the optional parts give way
//! first — revisions are skipped and social posts and the summary are written offline, each
//! with a warning — so the time left goes to delivering the article.
use super::*;
use crate::agents::Hurried;

/// The social posts' and the summary's agents.
type Distribution = (
    Arc<dyn Agent<FinalArticle, api::SocialContent>>,
    Arc<dyn Agent<FinalArticle, api::Summary>>,
);

/// What a part is expected to take is what its like took, with this margin.
const MARGIN: f64 = 1.25;

impl JobRun {
    /// How long one run of `phase` took on average in this job, if it ran.
    fn took(&self, phase: Phase) -> Option<Duration> {
        let metrics = lock(&self.metrics);
        let record = metrics.phases.iter().find(|p| p.phase == phase.as_str())?;
        let total = Duration::try_from(record.duration?).ok()?;
        Some(total / record.runs.max(1))
    }

    /// The time left before the deadline, when it is less than `needed` (with the margin).
    fn short_of(&self, needed: Duration) -> Option<Duration> {
        let deadline = self.cx.scope.deadline?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        (left.as_secs_f64() < needed.as_secs_f64() * MARGIN).then_some(left)
    }

    /// Whether a revision still fits before the deadline: one takes about a writing and an
    /// analysis, and the distribution must fit after it. Warns when it does not.
    pub(super) fn revision_fits(&self) -> bool {
        let (Some(writing), Some(analysis)) =
            (self.took(Phase::Writing), self.took(Phase::Analysis))
        else {
            return true;
        };
        let needed = writing + analysis + self.distribution_needs();
        let Some(left) = self.short_of(needed) else {
            return true;
        };
        self.warn(
            Phase::Revision,
            Some(AgentName::ContentWriter),
            WarningCode::RevisionsSkipped,
            format!(
                "the deadline leaves {left:.0?} and a revision takes about {needed:.0?} at this job's pace; no revision, the article goes out as it is"
            ),
        );
        false
    }

    /// What the distribution is expected to take: LLM calls like the analysis's.
    fn distribution_needs(&self) -> Duration {
        let request = self.request();
        if !request.include_social && !request.include_summary {
            return Duration::ZERO;
        }
        self.took(Phase::Analysis).unwrap_or_default()
    }

    /// The distribution agents to run: their offline versions (degraded, with a warning
    /// each) when the model would not finish them before the deadline.
    pub(super) fn distribution_agents(&self) -> Distribution {
        let agents = &self.agents;
        let (social, summary) = (
            agents.social_promoter.clone(),
            agents.summary_writer.clone(),
        );
        let Some(offline) = &agents.offline else {
            return (social, summary);
        };
        let needed = self.distribution_needs();
        let Some(left) = self.short_of(needed) else {
            return (social, summary);
        };
        let why = format!(
            "the deadline leaves {left:.0?} and the model's distribution takes about {needed:.0?} at this job's pace; the offline version wrote it"
        );
        (
            Arc::new(Hurried {
                name: AgentName::SocialPromoter,
                offline: offline.social_promoter.clone(),
                why: why.clone(),
            }),
            Arc::new(Hurried {
                name: AgentName::SummaryWriter,
                offline: offline.summary_writer.clone(),
                why,
            }),
        )
    }
}
