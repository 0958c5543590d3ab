//! The finished `Article`, assembled from what the phases produced.
use super::*;

/// A draft and what the analysis phase found in it.
pub(super) struct Analysed {
    pub(super) draft: Draft,
    pub(super) content: api::ContentMetrics,
    pub(super) seo: api::SeoMetadata,
    pub(super) fact_check: api::FactCheckReport,
}

/// What the article is assembled from.
pub(super) struct Assembly<'a> {
    pub(super) final_article: FinalArticle,
    pub(super) analysed: Analysed,
    pub(super) problems: Vec<contract::Problem>,
    pub(super) revisions: u32,
    pub(super) synthesis: &'a Synthesis,
    pub(super) related: Vec<api::RelatedArticle>,
    pub(super) social: Option<api::SocialContent>,
    pub(super) summary: Option<api::Summary>,
}

impl JobRun {
    /// The finished `Article`, with its metadata and run metrics.
    pub(super) fn assemble(&self, parts: Assembly<'_>) -> api::Article {
        let request = self.request();
        let Assembly {
            final_article,
            analysed,
            problems,
            revisions,
            synthesis,
            related,
            social,
            summary,
        } = parts;
        let Analysed {
            draft,
            content,
            seo,
            fact_check,
        } = analysed;
        let quality = metrics_analyzer::quality(&content, &problems, &fact_check, revisions);
        let mut metrics = lock(&self.metrics).clone();
        metrics.total_duration = proto_duration(self.started.elapsed());
        metrics.upstream_calls = self.cx.upstream.snapshot();
        metrics.revision_iterations = revisions;
        api::Article {
            job_id: self.job.id().to_string(),
            topic: request.topic.clone(),
            slug: request.slug.clone(),
            title: final_article.title,
            markdown: draft.markdown,
            metadata: Some(api::ArticleMetadata {
                seo: Some(seo),
                content: Some(content),
                quality: Some(quality),
                key_themes: synthesis.key_themes.clone(),
                outline: synthesis
                    .outline
                    .iter()
                    .map(|s| s.heading.clone())
                    .collect(),
                related_articles: related,
                audience: request.audience.clone(),
                tone: request.tone.clone(),
                target_word_count: request.word_count as u32,
                custom_instructions: request.custom_instructions.clone(),
            }),
            social,
            summary,
            fact_check: Some(fact_check),
            sources: synthesis.sources.iter().map(|s| s.source.clone()).collect(),
            metrics: Some(metrics),
            created_at: Some(SystemTime::now().into()),
        }
    }
}

pub fn proto_duration(duration: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(duration).ok()
}
