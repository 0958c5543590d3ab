//! Which implementation each agent gets: LLM-backed when an LLM endpoint is configured,
//! Serper-backed web research when a key is, the offline agents otherwise.
use std::sync::Arc;

use super::{
    Agent, AgentError, AgentName, Agents, WithFallback,
    content_writer::LlmWriter,
    fact_checker::LlmFactChecker,
    kb_researcher::LlmKbResearcher,
    llm::LlmAgent,
    pricing::PriceTable,
    prompts::Prompts,
    research_synthesizer::{LlmSynthesizer, plan::LlmOutlinePlanner},
    seo_specialist::LlmSeo,
    social_promoter::LlmSocial,
    summary_writer::LlmSummary,
    web_researcher::SerperWebResearcher,
};
use crate::{
    config::UpstreamConfig,
    kb::KnowledgeSource,
    metrics::Metrics,
    resilience::Guards,
    upstream::{
        api_client,
        fetch::Fetcher,
        llm::{LlmClient, LlmSettings},
        serper::SerperClient,
        vector_store::VectorStoreClient,
    },
};

use crate::{cache::Cache, redis::Redis};

const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// The upstream clients and per-agent settings built from configuration, once.
pub struct Upstreams {
    /// The resilience stacks, for health and metrics.
    pub guards: Guards,
    pub metrics: Arc<Metrics>,
    /// The cache of upstream answers, and the shared Redis behind it (if configured).
    pub cache: Arc<Cache>,
    pub redis: Option<Arc<Redis>>,
    pub llm: Option<Arc<LlmClient>>,
    pub serper: Option<Arc<SerperClient>>,
    pub vector_store: Option<Arc<VectorStoreClient>>,
    pub fetcher: Arc<Fetcher>,
    pub prompts: Arc<Prompts>,
    pub prices: Arc<PriceTable>,
    models: Models,
}

/// Model per agent: its tier's model unless overridden.
#[derive(Debug, Clone)]
struct Models {
    nano: String,
    mini: String,
    full: String,
    overrides: Vec<(String, String)>,
}

const AGENTS_WITH_MODELS: [AgentName; 8] = [
    AgentName::KbResearcher,
    AgentName::WebResearcher,
    AgentName::ResearchSynthesizer,
    AgentName::ContentWriter,
    AgentName::SeoSpecialist,
    AgentName::FactChecker,
    AgentName::SocialPromoter,
    AgentName::SummaryWriter,
];

impl Models {
    /// Each tier's model and the per-agent overrides, which must name LLM agents.
    fn from_config(config: &UpstreamConfig) -> Result<Self, String> {
        if let Some((agent, _)) = config
            .agent_models
            .iter()
            .find(|(agent, _)| !AGENTS_WITH_MODELS.iter().any(|a| a.as_str() == agent))
        {
            return Err(format!(
                "--agent-models names `{agent}`, which is not an LLM agent"
            ));
        }
        Ok(Self {
            nano: config.model_nano.clone(),
            mini: config.model_mini.clone(),
            full: config.model_full.clone(),
            overrides: config.agent_models.clone(),
        })
    }

    fn for_agent(&self, agent: AgentName) -> String {
        if let Some((_, model)) = self.overrides.iter().find(|(a, _)| a == agent.as_str()) {
            return model.clone();
        }
        match agent {
            AgentName::KbResearcher | AgentName::SeoSpecialist | AgentName::SocialPromoter => {
                self.nano.clone()
            }
            AgentName::WebResearcher | AgentName::FactChecker | AgentName::SummaryWriter => {
                self.mini.clone()
            }
            _ => self.full.clone(),
        }
    }
}

/// The LLM client, when an endpoint or a key is configured (else the agents run offline).
fn llm_client(
    config: &UpstreamConfig,
    http: &reqwest::Client,
    base_url: &str,
    guards: &Guards,
) -> Option<Arc<LlmClient>> {
    let llm_configured = config.openai_api_key.is_some() || config.openai_base_url.is_some();
    llm_configured.then(|| {
        Arc::new(LlmClient::new(
            http.clone(),
            LlmSettings {
                base_url: base_url.to_string(),
                api_key: config.openai_api_key.clone(),
                timeout: config.llm_timeout,
                first_token_timeout: config.llm_first_token_timeout,
                idle_timeout: config.llm_idle_timeout,
                temperature: config.llm_temperature,
                structured_output: config.llm_structured_output,
                stream_structured: config.llm_stream_structured,
                context_tokens: config.llm_context_tokens,
                concurrency: config.llm_concurrency,
            },
            guards.llm.clone(),
        ))
    })
}

impl Upstreams {
    /// The clients of configuration `config`; their answers cached in the process and, when
    /// configured, in `redis`.
    pub fn from_config(
        config: &UpstreamConfig,
        metrics: Arc<Metrics>,
        redis: Option<Arc<Redis>>,
    ) -> Result<Self, String> {
        let models = Models::from_config(config)?;
        let http = api_client().map_err(|e| format!("HTTP client: {e}"))?;
        let cache = Arc::new(Cache::new(
            config.cache_max_bytes,
            redis.clone(),
            metrics.clone(),
        ));
        let guards = Guards::from_config(config, &metrics, &cache, redis.as_ref())?;
        let base_url = config
            .openai_base_url
            .clone()
            .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_string());
        let llm = llm_client(config, &http, &base_url, &guards);
        let vector_store = config.openai_vector_store_id.clone().map(|id| {
            Arc::new(VectorStoreClient::new(
                http.clone(),
                &base_url,
                config.openai_api_key.clone(),
                id,
                config.kb_timeout,
                guards.kb.clone(),
            ))
        });
        let serper = config.serper_api_key.clone().map(|key| {
            Arc::new(SerperClient::new(
                http.clone(),
                &config.serper_base_url,
                key,
                config.web_timeout,
                guards.web.clone(),
            ))
        });
        let fetcher = Fetcher::new(
            config.fetch_timeout,
            config.fetch_max_bytes,
            config.fetch_allow_private,
            guards.fetch.clone(),
        )
        .map_err(|e| format!("fetch client: {e}"))?;
        Ok(Self {
            guards,
            metrics,
            cache,
            redis,
            llm,
            serper,
            vector_store,
            fetcher: Arc::new(fetcher),
            prompts: Arc::new(
                Prompts::load(config.prompts_dir.as_deref()).map_err(|e| e.to_string())?,
            ),
            prices: Arc::new(PriceTable::new(&config.prices)?),
            models,
        })
    }

    fn llm_agent(&self, client: &Arc<LlmClient>, agent: AgentName) -> LlmAgent {
        LlmAgent {
            client: client.clone(),
            prompts: self.prompts.clone(),
            model: self.models.for_agent(agent),
            name: agent,
        }
    }
}

impl Agents {
    /// The agents this configuration selects, over knowledge base `kb`.
    pub fn build(kb: KnowledgeSource, upstreams: &Upstreams) -> Agents {
        let mut agents = Agents::offline(kb.clone());
        let llm = upstreams
            .llm
            .as_ref()
            .map(|client| (client, |agent| upstreams.llm_agent(client, agent)));
        if let Some(serper) = &upstreams.serper {
            agents.web_researcher = Arc::new(SerperWebResearcher {
                serper: serper.clone(),
                llm: llm.as_ref().map(|(_, make)| make(AgentName::WebResearcher)),
            });
        }
        if let Some((_, make)) = llm {
            use AgentName::*;
            let offline = agents.clone();
            agents.offline = Some(Arc::new(offline.clone()));
            agents.kb_researcher = degrading(
                KbResearcher,
                Arc::new(LlmKbResearcher {
                    llm: make(KbResearcher),
                    kb,
                }),
                offline.kb_researcher,
            );
            agents.outline_planner = degrading(
                ResearchSynthesizer,
                Arc::new(LlmOutlinePlanner {
                    llm: make(ResearchSynthesizer),
                }),
                offline.outline_planner,
            );
            agents.research_synthesizer = degrading(
                ResearchSynthesizer,
                Arc::new(LlmSynthesizer {
                    llm: make(ResearchSynthesizer),
                }),
                offline.research_synthesizer,
            );
            // The writer's stand-in takes over when the model answers nothing usable; an
            // unreachable model still fails the job with UNAVAILABLE. Its draft also
            // replaces one that misses the article contract after the revisions.
            agents.content_writer = Arc::new(WithFallback {
                name: ContentWriter,
                primary: Arc::new(LlmWriter {
                    llm: make(ContentWriter),
                }),
                fallback: offline.content_writer.clone(),
                when: AgentError::is_invalid_answer,
            });
            agents.seo_specialist = degrading(
                SeoSpecialist,
                Arc::new(LlmSeo {
                    llm: make(SeoSpecialist),
                }),
                offline.seo_specialist,
            );
            agents.fact_checker = degrading(
                FactChecker,
                Arc::new(LlmFactChecker {
                    llm: make(FactChecker),
                }),
                offline.fact_checker,
            );
            agents.social_promoter = degrading(
                SocialPromoter,
                Arc::new(LlmSocial {
                    llm: make(SocialPromoter),
                }),
                offline.social_promoter,
            );
            agents.summary_writer = degrading(
                SummaryWriter,
                Arc::new(LlmSummary {
                    llm: make(SummaryWriter),
                }),
                offline.summary_writer,
            );
        }
        agents
    }
}

/// `primary`, with `fallback` standing in when it fails.
fn degrading<I: ?Sized + Sync + 'static, O: Send + 'static>(
    name: AgentName,
    primary: Arc<dyn Agent<I, O>>,
    fallback: Arc<dyn Agent<I, O>>,
) -> Arc<dyn Agent<I, O>> {
    Arc::new(WithFallback {
        name,
        primary,
        fallback,
        when: AgentError::is_llm_failure,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Config;

    #[test]
    fn each_agent_gets_its_tier_model_unless_overridden() {
        let config = Config::parse_from([
            "dakota-server",
            "--model-nano",
            "n",
            "--model-mini",
            "m",
            "--model-full",
            "f",
            "--agent-models",
            "seo_specialist=special,content_writer=writer-model",
        ]);
        let upstreams =
            Upstreams::from_config(&config.upstreams, Default::default(), None).unwrap();
        let model = |a| upstreams.models.for_agent(a);
        assert_eq!(model(AgentName::KbResearcher), "n");
        assert_eq!(model(AgentName::SocialPromoter), "n");
        assert_eq!(model(AgentName::WebResearcher), "m");
        assert_eq!(model(AgentName::FactChecker), "m");
        assert_eq!(model(AgentName::SummaryWriter), "m");
        assert_eq!(model(AgentName::ResearchSynthesizer), "f");
        assert_eq!(model(AgentName::SeoSpecialist), "special");
        assert_eq!(model(AgentName::ContentWriter), "writer-model");

        let typo = Config::parse_from(["dakota-server", "--agent-models", "seo=x"]);
        assert!(Upstreams::from_config(&typo.upstreams, Default::default(), None).is_err());
        let bad_price = Config::parse_from(["dakota-server", "--prices", "gpt-4.1=free"]);
        assert!(Upstreams::from_config(&bad_price.upstreams, Default::default(), None).is_err());
    }
}
