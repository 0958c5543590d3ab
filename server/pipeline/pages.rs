//! The pages of cited web sources, fetched once per job for the fact check.
use super::*;
use crate::domain::WarningCode;

impl JobRun {
    /// The sources with the pages of the web sources the draft cites read in place of their
    /// snippets, and the fetches made for them (a page this job has read is not asked
    /// again). A page that cannot be read leaves no text, so its claims are unverifiable,
    /// and the job goes on with a warning.
    pub(super) async fn with_fetched_pages(
        &self,
        phase: Phase,
        draft: &Draft,
        sources: &Arc<Vec<SourceDoc>>,
    ) -> (Arc<Vec<SourceDoc>>, Calls) {
        let Some(fetcher) = &self.settings.fetcher else {
            return (sources.clone(), Calls::default());
        };
        let cited: Vec<String> = text::links(&draft.markdown)
            .iter()
            .map(|l| l.url.to_string())
            .collect();
        let web: Vec<&SourceDoc> = sources
            .iter()
            .filter(|s| s.source.kind() == api::SourceKind::Web && cited.contains(&s.source.url))
            .collect();
        if web.is_empty() {
            return (sources.clone(), Calls::default());
        }
        let mut fetched = self.fetched.lock().await;
        let missing: Vec<&str> = web
            .iter()
            .map(|s| s.source.url.as_str())
            .filter(|u| !fetched.contains_key(*u))
            .collect();
        let scope = CallScope {
            pool: Pool::Analysis,
            tally: None,
            ..self.cx.scope.clone()
        };
        let pages = futures_util::future::join_all(
            missing.iter().map(|url| fetcher.fetch_page(&scope, url)),
        )
        .await;
        let calls = pages.iter().map(Called::calls).sum();
        for (url, page) in missing.into_iter().zip(pages) {
            self.cx
                .upstream
                .record(crate::domain::Upstream::Fetch, page.result.is_ok());
            let text = page.result.unwrap_or_else(|error| {
                self.warn(
                    phase,
                    Some(AgentName::FactChecker),
                    WarningCode::SourceFetchFailed,
                    format!("{url}: {error}; its claims are unverifiable"),
                );
                String::new()
            });
            fetched.insert(url.to_string(), text);
        }
        let sources = Arc::new(
            sources
                .iter()
                .map(|s| match fetched.get(&s.source.url) {
                    Some(page) => SourceDoc {
                        text: page.clone(),
                        ..s.clone()
                    },
                    None => s.clone(),
                })
                .collect(),
        );
        (sources, calls)
    }
}
