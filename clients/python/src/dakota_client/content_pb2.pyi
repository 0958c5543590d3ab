import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_COMPLETED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class SourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_KIND_UNSPECIFIED: _ClassVar[SourceKind]
    SOURCE_KIND_KNOWLEDGE_BASE: _ClassVar[SourceKind]
    SOURCE_KIND_WEB: _ClassVar[SourceKind]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_SUPPORTED: _ClassVar[Verdict]
    VERDICT_UNSUPPORTED: _ClassVar[Verdict]
    VERDICT_UNVERIFIABLE: _ClassVar[Verdict]
    VERDICT_QUOTED: _ClassVar[Verdict]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_COMPLETED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
SOURCE_KIND_UNSPECIFIED: SourceKind
SOURCE_KIND_KNOWLEDGE_BASE: SourceKind
SOURCE_KIND_WEB: SourceKind
VERDICT_UNSPECIFIED: Verdict
VERDICT_SUPPORTED: Verdict
VERDICT_UNSUPPORTED: Verdict
VERDICT_UNVERIFIABLE: Verdict
VERDICT_QUOTED: Verdict

class GenerateRequest(_message.Message):
    __slots__ = ("topic", "word_count", "audience", "tone", "custom_instructions", "include_social", "include_summary", "skip_web_search", "idempotency_key", "max_total_tokens")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TONE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SOCIAL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SKIP_WEB_SEARCH_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    word_count: int
    audience: str
    tone: str
    custom_instructions: str
    include_social: bool
    include_summary: bool
    skip_web_search: bool
    idempotency_key: str
    max_total_tokens: int
    def __init__(self, topic: _Optional[str] = ..., word_count: _Optional[int] = ..., audience: _Optional[str] = ..., tone: _Optional[str] = ..., custom_instructions: _Optional[str] = ..., include_social: _Optional[bool] = ..., include_summary: _Optional[bool] = ..., skip_web_search: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., max_total_tokens: _Optional[int] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "timestamp", "progress", "job_started", "phase_started", "agent_started", "agent_completed", "content_delta", "warning", "phase_completed", "completed", "failed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_STARTED_FIELD_NUMBER: _ClassVar[int]
    PHASE_STARTED_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_FIELD_NUMBER: _ClassVar[int]
    AGENT_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DELTA_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    PHASE_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    timestamp: _timestamp_pb2.Timestamp
    progress: int
    job_started: JobStarted
    phase_started: PhaseStarted
    agent_started: AgentStarted
    agent_completed: AgentCompleted
    content_delta: ContentDelta
    warning: Warning
    phase_completed: PhaseCompleted
    completed: Completed
    failed: Failed
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[int] = ..., job_started: _Optional[_Union[JobStarted, _Mapping]] = ..., phase_started: _Optional[_Union[PhaseStarted, _Mapping]] = ..., agent_started: _Optional[_Union[AgentStarted, _Mapping]] = ..., agent_completed: _Optional[_Union[AgentCompleted, _Mapping]] = ..., content_delta: _Optional[_Union[ContentDelta, _Mapping]] = ..., warning: _Optional[_Union[Warning, _Mapping]] = ..., phase_completed: _Optional[_Union[PhaseCompleted, _Mapping]] = ..., completed: _Optional[_Union[Completed, _Mapping]] = ..., failed: _Optional[_Union[Failed, _Mapping]] = ...) -> None: ...

class JobStarted(_message.Message):
    __slots__ = ("topic", "slug", "word_count", "phases", "idempotency_key")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SLUG_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    topic: str
    slug: str
    word_count: int
    phases: _containers.RepeatedCompositeFieldContainer[PlannedPhase]
    idempotency_key: str
    def __init__(self, topic: _Optional[str] = ..., slug: _Optional[str] = ..., word_count: _Optional[int] = ..., phases: _Optional[_Iterable[_Union[PlannedPhase, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PlannedPhase(_message.Message):
    __slots__ = ("phase", "agents", "depends_on", "conditional")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    CONDITIONAL_FIELD_NUMBER: _ClassVar[int]
    phase: str
    agents: _containers.RepeatedScalarFieldContainer[str]
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    conditional: bool
    def __init__(self, phase: _Optional[str] = ..., agents: _Optional[_Iterable[str]] = ..., depends_on: _Optional[_Iterable[str]] = ..., conditional: _Optional[bool] = ...) -> None: ...

class PhaseStarted(_message.Message):
    __slots__ = ("phase", "iteration")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    phase: str
    iteration: int
    def __init__(self, phase: _Optional[str] = ..., iteration: _Optional[int] = ...) -> None: ...

class AgentStarted(_message.Message):
    __slots__ = ("agent", "phase", "provider", "model")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    agent: str
    phase: str
    provider: str
    model: str
    def __init__(self, agent: _Optional[str] = ..., phase: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AgentCompleted(_message.Message):
    __slots__ = ("agent", "phase", "duration", "usage", "cache_hit", "attempts", "provider", "model", "summary", "estimated_cost_usd", "calls", "cached_calls")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CACHED_CALLS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    phase: str
    duration: _duration_pb2.Duration
    usage: TokenUsage
    cache_hit: bool
    attempts: int
    provider: str
    model: str
    summary: str
    estimated_cost_usd: float
    calls: int
    cached_calls: int
    def __init__(self, agent: _Optional[str] = ..., phase: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., attempts: _Optional[int] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., summary: _Optional[str] = ..., estimated_cost_usd: _Optional[float] = ..., calls: _Optional[int] = ..., cached_calls: _Optional[int] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ...) -> None: ...

class ContentDelta(_message.Message):
    __slots__ = ("text", "iteration")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    text: str
    iteration: int
    def __init__(self, text: _Optional[str] = ..., iteration: _Optional[int] = ...) -> None: ...

class Warning(_message.Message):
    __slots__ = ("code", "message", "phase", "agent")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    phase: str
    agent: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., phase: _Optional[str] = ..., agent: _Optional[str] = ...) -> None: ...

class PhaseCompleted(_message.Message):
    __slots__ = ("phase", "duration", "iteration")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    phase: str
    duration: _duration_pb2.Duration
    iteration: int
    def __init__(self, phase: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., iteration: _Optional[int] = ...) -> None: ...

class Completed(_message.Message):
    __slots__ = ("article",)
    ARTICLE_FIELD_NUMBER: _ClassVar[int]
    article: Article
    def __init__(self, article: _Optional[_Union[Article, _Mapping]] = ...) -> None: ...

class Failed(_message.Message):
    __slots__ = ("code", "message", "phase", "retry_delay")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    phase: str
    retry_delay: _duration_pb2.Duration
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., phase: _Optional[str] = ..., retry_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class GetArticleRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job_id", "state")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class SearchKnowledgeBaseRequest(_message.Message):
    __slots__ = ("queries", "max_results", "max_per_document")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedScalarFieldContainer[str]
    max_results: int
    max_per_document: int
    def __init__(self, queries: _Optional[_Iterable[str]] = ..., max_results: _Optional[int] = ..., max_per_document: _Optional[int] = ...) -> None: ...

class SearchKnowledgeBaseResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    def __init__(self, results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("query", "hits")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    query: str
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, query: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("title", "url", "snippet", "score", "section")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    title: str
    url: str
    snippet: str
    score: float
    section: str
    def __init__(self, title: _Optional[str] = ..., url: _Optional[str] = ..., snippet: _Optional[str] = ..., score: _Optional[float] = ..., section: _Optional[str] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("id", "title", "url", "snippet", "kind", "domain", "authority_tier", "published", "relevance")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_TIER_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    url: str
    snippet: str
    kind: SourceKind
    domain: str
    authority_tier: int
    published: str
    relevance: float
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., url: _Optional[str] = ..., snippet: _Optional[str] = ..., kind: _Optional[_Union[SourceKind, str]] = ..., domain: _Optional[str] = ..., authority_tier: _Optional[int] = ..., published: _Optional[str] = ..., relevance: _Optional[float] = ...) -> None: ...

class Article(_message.Message):
    __slots__ = ("job_id", "topic", "slug", "title", "markdown", "metadata", "social", "summary", "fact_check", "sources", "metrics", "created_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SLUG_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOCIAL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FACT_CHECK_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    topic: str
    slug: str
    title: str
    markdown: str
    metadata: ArticleMetadata
    social: SocialContent
    summary: Summary
    fact_check: FactCheckReport
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    metrics: RunMetrics
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., topic: _Optional[str] = ..., slug: _Optional[str] = ..., title: _Optional[str] = ..., markdown: _Optional[str] = ..., metadata: _Optional[_Union[ArticleMetadata, _Mapping]] = ..., social: _Optional[_Union[SocialContent, _Mapping]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ..., fact_check: _Optional[_Union[FactCheckReport, _Mapping]] = ..., sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., metrics: _Optional[_Union[RunMetrics, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ArticleMetadata(_message.Message):
    __slots__ = ("seo", "content", "quality", "key_themes", "outline", "related_articles", "audience", "tone", "target_word_count", "custom_instructions")
    SEO_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    KEY_THEMES_FIELD_NUMBER: _ClassVar[int]
    OUTLINE_FIELD_NUMBER: _ClassVar[int]
    RELATED_ARTICLES_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TONE_FIELD_NUMBER: _ClassVar[int]
    TARGET_WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    seo: SeoMetadata
    content: ContentMetrics
    quality: QualityScores
    key_themes: _containers.RepeatedScalarFieldContainer[str]
    outline: _containers.RepeatedScalarFieldContainer[str]
    related_articles: _containers.RepeatedCompositeFieldContainer[RelatedArticle]
    audience: str
    tone: str
    target_word_count: int
    custom_instructions: str
    def __init__(self, seo: _Optional[_Union[SeoMetadata, _Mapping]] = ..., content: _Optional[_Union[ContentMetrics, _Mapping]] = ..., quality: _Optional[_Union[QualityScores, _Mapping]] = ..., key_themes: _Optional[_Iterable[str]] = ..., outline: _Optional[_Iterable[str]] = ..., related_articles: _Optional[_Iterable[_Union[RelatedArticle, _Mapping]]] = ..., audience: _Optional[str] = ..., tone: _Optional[str] = ..., target_word_count: _Optional[int] = ..., custom_instructions: _Optional[str] = ...) -> None: ...

class SeoMetadata(_message.Message):
    __slots__ = ("title", "meta_description", "keywords")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    META_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    title: str
    meta_description: str
    keywords: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, title: _Optional[str] = ..., meta_description: _Optional[str] = ..., keywords: _Optional[_Iterable[str]] = ...) -> None: ...

class ContentMetrics(_message.Message):
    __slots__ = ("word_count", "section_count", "citation_count", "paragraph_count", "sentence_count", "reading_time_minutes", "flesch_reading_ease", "avg_sentence_words", "distinct_sources_cited")
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    CITATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAGRAPH_COUNT_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    READING_TIME_MINUTES_FIELD_NUMBER: _ClassVar[int]
    FLESCH_READING_EASE_FIELD_NUMBER: _ClassVar[int]
    AVG_SENTENCE_WORDS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_SOURCES_CITED_FIELD_NUMBER: _ClassVar[int]
    word_count: int
    section_count: int
    citation_count: int
    paragraph_count: int
    sentence_count: int
    reading_time_minutes: int
    flesch_reading_ease: float
    avg_sentence_words: float
    distinct_sources_cited: int
    def __init__(self, word_count: _Optional[int] = ..., section_count: _Optional[int] = ..., citation_count: _Optional[int] = ..., paragraph_count: _Optional[int] = ..., sentence_count: _Optional[int] = ..., reading_time_minutes: _Optional[int] = ..., flesch_reading_ease: _Optional[float] = ..., avg_sentence_words: _Optional[float] = ..., distinct_sources_cited: _Optional[int] = ...) -> None: ...

class QualityScores(_message.Message):
    __slots__ = ("overall", "contract_satisfied", "contract_violations", "fact_check_score", "revision_iterations")
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_SATISFIED_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    FACT_CHECK_SCORE_FIELD_NUMBER: _ClassVar[int]
    REVISION_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    overall: float
    contract_satisfied: bool
    contract_violations: _containers.RepeatedScalarFieldContainer[str]
    fact_check_score: float
    revision_iterations: int
    def __init__(self, overall: _Optional[float] = ..., contract_satisfied: _Optional[bool] = ..., contract_violations: _Optional[_Iterable[str]] = ..., fact_check_score: _Optional[float] = ..., revision_iterations: _Optional[int] = ...) -> None: ...

class RelatedArticle(_message.Message):
    __slots__ = ("title", "url", "relevance")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    title: str
    url: str
    relevance: float
    def __init__(self, title: _Optional[str] = ..., url: _Optional[str] = ..., relevance: _Optional[float] = ...) -> None: ...

class SocialContent(_message.Message):
    __slots__ = ("linkedin_posts", "thread", "email_snippet", "instagram_post", "facebook_post")
    LINKEDIN_POSTS_FIELD_NUMBER: _ClassVar[int]
    THREAD_FIELD_NUMBER: _ClassVar[int]
    EMAIL_SNIPPET_FIELD_NUMBER: _ClassVar[int]
    INSTAGRAM_POST_FIELD_NUMBER: _ClassVar[int]
    FACEBOOK_POST_FIELD_NUMBER: _ClassVar[int]
    linkedin_posts: _containers.RepeatedScalarFieldContainer[str]
    thread: _containers.RepeatedScalarFieldContainer[str]
    email_snippet: str
    instagram_post: str
    facebook_post: str
    def __init__(self, linkedin_posts: _Optional[_Iterable[str]] = ..., thread: _Optional[_Iterable[str]] = ..., email_snippet: _Optional[str] = ..., instagram_post: _Optional[str] = ..., facebook_post: _Optional[str] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("key_value", "overview", "takeaways")
    KEY_VALUE_FIELD_NUMBER: _ClassVar[int]
    OVERVIEW_FIELD_NUMBER: _ClassVar[int]
    TAKEAWAYS_FIELD_NUMBER: _ClassVar[int]
    key_value: str
    overview: str
    takeaways: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_value: _Optional[str] = ..., overview: _Optional[str] = ..., takeaways: _Optional[_Iterable[str]] = ...) -> None: ...

class Claim(_message.Message):
    __slots__ = ("text", "kind", "verdict", "source_id", "source_url", "evidence")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URL_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    kind: str
    verdict: Verdict
    source_id: str
    source_url: str
    evidence: str
    def __init__(self, text: _Optional[str] = ..., kind: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., source_id: _Optional[str] = ..., source_url: _Optional[str] = ..., evidence: _Optional[str] = ...) -> None: ...

class FactCheckReport(_message.Message):
    __slots__ = ("claims", "supported", "unsupported", "unverifiable", "invalid_citations", "passed", "quoted")
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_FIELD_NUMBER: _ClassVar[int]
    UNVERIFIABLE_FIELD_NUMBER: _ClassVar[int]
    INVALID_CITATIONS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    QUOTED_FIELD_NUMBER: _ClassVar[int]
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    supported: int
    unsupported: int
    unverifiable: int
    invalid_citations: _containers.RepeatedScalarFieldContainer[str]
    passed: bool
    quoted: int
    def __init__(self, claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ..., supported: _Optional[int] = ..., unsupported: _Optional[int] = ..., unverifiable: _Optional[int] = ..., invalid_citations: _Optional[_Iterable[str]] = ..., passed: _Optional[bool] = ..., quoted: _Optional[int] = ...) -> None: ...

class RunMetrics(_message.Message):
    __slots__ = ("total_duration", "phases", "agents", "total_input_tokens", "total_output_tokens", "estimated_cost_usd", "cache_hits", "upstream_calls", "revision_iterations", "degraded", "calls", "cached_calls")
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CALLS_FIELD_NUMBER: _ClassVar[int]
    REVISION_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CACHED_CALLS_FIELD_NUMBER: _ClassVar[int]
    total_duration: _duration_pb2.Duration
    phases: _containers.RepeatedCompositeFieldContainer[PhaseMetrics]
    agents: _containers.RepeatedCompositeFieldContainer[AgentMetrics]
    total_input_tokens: int
    total_output_tokens: int
    estimated_cost_usd: float
    cache_hits: int
    upstream_calls: _containers.RepeatedCompositeFieldContainer[UpstreamCalls]
    revision_iterations: int
    degraded: _containers.RepeatedCompositeFieldContainer[DegradedPart]
    calls: int
    cached_calls: int
    def __init__(self, total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., phases: _Optional[_Iterable[_Union[PhaseMetrics, _Mapping]]] = ..., agents: _Optional[_Iterable[_Union[AgentMetrics, _Mapping]]] = ..., total_input_tokens: _Optional[int] = ..., total_output_tokens: _Optional[int] = ..., estimated_cost_usd: _Optional[float] = ..., cache_hits: _Optional[int] = ..., upstream_calls: _Optional[_Iterable[_Union[UpstreamCalls, _Mapping]]] = ..., revision_iterations: _Optional[int] = ..., degraded: _Optional[_Iterable[_Union[DegradedPart, _Mapping]]] = ..., calls: _Optional[int] = ..., cached_calls: _Optional[int] = ...) -> None: ...

class DegradedPart(_message.Message):
    __slots__ = ("agent", "phase", "cause", "message")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agent: str
    phase: str
    cause: str
    message: str
    def __init__(self, agent: _Optional[str] = ..., phase: _Optional[str] = ..., cause: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PhaseMetrics(_message.Message):
    __slots__ = ("phase", "duration", "runs")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    duration: _duration_pb2.Duration
    runs: int
    def __init__(self, phase: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., runs: _Optional[int] = ...) -> None: ...

class AgentMetrics(_message.Message):
    __slots__ = ("agent", "phase", "duration", "usage", "provider", "model", "cache_hit", "attempts", "estimated_cost_usd", "calls", "cached_calls")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CACHED_CALLS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    phase: str
    duration: _duration_pb2.Duration
    usage: TokenUsage
    provider: str
    model: str
    cache_hit: bool
    attempts: int
    estimated_cost_usd: float
    calls: int
    cached_calls: int
    def __init__(self, agent: _Optional[str] = ..., phase: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., cache_hit: _Optional[bool] = ..., attempts: _Optional[int] = ..., estimated_cost_usd: _Optional[float] = ..., calls: _Optional[int] = ..., cached_calls: _Optional[int] = ...) -> None: ...

class UpstreamCalls(_message.Message):
    __slots__ = ("upstream", "calls", "errors")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    calls: int
    errors: int
    def __init__(self, upstream: _Optional[str] = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ...) -> None: ...
