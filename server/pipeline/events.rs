//! A job's events and accounting: phases and agents started and completed, progress,
//! warnings, and each agent's tokens, cost, calls and attempts in the run metrics.
use super::*;
use crate::domain::WarningCode;
use crate::resilience::Tally;

impl JobRun {
    pub(super) fn progress(&self, phase: Phase, total_agents: u32) -> u32 {
        let (start, end) = phase.progress_range();
        let done = self
            .done_in_phase
            .load(Ordering::Relaxed)
            .min(total_agents.max(1));
        start + (end - start) * done / total_agents.max(1)
    }

    pub(super) fn emit(&self, event: Event, progress: u32) {
        self.job.emit(event, progress);
    }

    pub(super) fn warn(
        &self,
        phase: Phase,
        agent: Option<AgentName>,
        code: WarningCode,
        message: String,
    ) {
        let progress = self.progress(phase, 1);
        self.emit(
            Event::Warning(api::Warning {
                code: code.as_str().to_string(),
                message,
                phase: phase.as_str().to_string(),
                agent: agent.map(|a| a.as_str().to_string()).unwrap_or_default(),
            }),
            progress.min(phase.progress_range().0),
        );
    }

    /// Runs one phase: `phase_started`, the work, `phase_completed` with its duration.
    pub(super) async fn phase<T, F: Future<Output = Result<T, PipelineError>>>(
        &self,
        phase: Phase,
        iteration: u32,
        work: F,
    ) -> Result<T, PipelineError> {
        *lock(&self.phase) = phase;
        self.done_in_phase.store(0, Ordering::Relaxed);
        let (start, end) = phase.progress_range();
        self.emit(
            Event::PhaseStarted(api::PhaseStarted {
                phase: phase.as_str().into(),
                iteration,
            }),
            start,
        );
        let began = Instant::now();
        let span = tracing::info_span!(
            "phase",
            otel.name = phase.as_str(),
            phase = phase.as_str(),
            iteration
        );
        let value = work.instrument(span).await?;
        let elapsed = began.elapsed();
        self.settings
            .metrics
            .phase_duration
            .get_or_create(&metrics::Phase {
                phase: phase.as_str(),
            })
            .observe(elapsed.as_secs_f64());
        self.emit(
            Event::PhaseCompleted(api::PhaseCompleted {
                phase: phase.as_str().into(),
                duration: proto_duration(elapsed),
                iteration,
            }),
            end,
        );
        if let Ok(mut metrics) = self.metrics.lock() {
            match metrics
                .phases
                .iter_mut()
                .find(|p| p.phase == phase.as_str())
            {
                Some(existing) => {
                    let total = existing
                        .duration
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or_default()
                        + elapsed;
                    existing.duration = proto_duration(total);
                    existing.runs += 1;
                }
                None => metrics.phases.push(api::PhaseMetrics {
                    phase: phase.as_str().into(),
                    duration: proto_duration(elapsed),
                    runs: 1,
                }),
            }
        }
        Ok(value)
    }

    /// Runs one agent with its events and accounting.
    pub(super) async fn agent<I: ?Sized + Sync, O>(
        &self,
        phase: Phase,
        phase_agents: u32,
        name: AgentName,
        agent: &dyn Agent<I, O>,
        input: &I,
    ) -> Result<O, PipelineError> {
        self.agent_after(phase, phase_agents, name, agent, input, Calls::default())
            .await
    }

    /// [`JobRun::agent`] for an agent whose input took `calls` made for it (the pages the
    /// fact checker checks against): they count as its own.
    pub(super) async fn agent_after<I: ?Sized + Sync, O>(
        &self,
        phase: Phase,
        phase_agents: u32,
        name: AgentName,
        agent: &dyn Agent<I, O>,
        input: &I,
        calls: Calls,
    ) -> Result<O, PipelineError> {
        let (provider, model) = (agent.provider().to_string(), agent.model().to_string());
        self.emit(
            Event::AgentStarted(api::AgentStarted {
                agent: name.as_str().into(),
                phase: phase.as_str().into(),
                provider: provider.clone(),
                model: model.clone(),
            }),
            self.progress(phase, phase_agents),
        );
        let began = Instant::now();
        // Each agent's upstream calls count against the pool of its kind of work, and are
        // counted by the stack into the agent's own tally.
        let tally = Arc::new(Tally::default());
        let cx = AgentContext {
            scope: CallScope {
                pool: Pool::for_agent(name),
                tally: Some(tally.clone()),
                ..self.cx.scope.clone()
            },
            ..self.cx.clone()
        };
        let span = tracing::info_span!(
            "agent",
            otel.name = name.as_str(),
            agent = name.as_str(),
            phase = phase.as_str(),
            provider = provider.as_str(),
            model = model.as_str(),
        );
        let mut output = agent
            .run(&cx, input)
            .instrument(span)
            .await
            .map_err(|source| PipelineError::Agent {
                agent: name.as_str(),
                source,
            })?;
        output.take_counted(tally.counted());
        output.calls.add(calls);
        let elapsed = began.elapsed();
        for (code, message) in &output.warnings {
            self.warn(phase, Some(name), *code, message.clone());
        }
        let (record, used) = self.book(phase, name, &output, (provider, model), elapsed);
        self.done_in_phase.fetch_add(1, Ordering::Relaxed);
        self.emit(
            Event::AgentCompleted(api::AgentCompleted {
                agent: record.agent,
                phase: record.phase,
                duration: record.duration,
                usage: record.usage,
                cache_hit: record.cache_hit,
                attempts: record.attempts,
                provider: record.provider,
                model: record.model,
                summary: output.summary,
                estimated_cost_usd: record.estimated_cost_usd,
                calls: record.calls,
                cached_calls: record.cached_calls,
            }),
            self.progress(phase, phase_agents),
        );
        if let Some(budget) = self.request().max_total_tokens
            && used > budget
        {
            return Err(PipelineError::Budget { budget, used });
        }
        Ok(output.value)
    }

    /// Books a finished agent into the run metrics and Prometheus: who really produced its
    /// output (the offline version, when it stood in, is also a degraded part), its tokens
    /// and cost. Returns its record and the job's tokens so far.
    pub(super) fn book<O>(
        &self,
        phase: Phase,
        name: AgentName,
        output: &AgentOutput<O>,
        (provider, model): (String, String),
        elapsed: Duration,
    ) -> (api::AgentMetrics, u64) {
        // The tokens of a degraded part are those its model spent before it failed.
        let priced = model.clone();
        let (provider, model) = match &output.degraded {
            Some(degraded) => {
                lock(&self.metrics).degraded.push(api::DegradedPart {
                    agent: name.as_str().into(),
                    phase: phase.as_str().into(),
                    cause: degraded.cause.into(),
                    message: degraded.message.clone(),
                });
                (degraded.provider.clone(), degraded.model.clone())
            }
            None => (provider, model),
        };
        let priced = if output.degraded.is_some() {
            &priced
        } else {
            &model
        };
        let cost = self.settings.prices.cost(
            priced,
            output.usage.input_tokens,
            output.usage.output_tokens,
        );
        self.record_agent_metrics(name, &provider, priced, output.usage, cost, elapsed);
        let record = api::AgentMetrics {
            agent: name.as_str().into(),
            phase: phase.as_str().into(),
            duration: proto_duration(elapsed),
            usage: Some(output.usage),
            provider,
            model,
            cache_hit: output.cache_hit(),
            attempts: output.attempts,
            estimated_cost_usd: cost,
            calls: output.calls.total,
            cached_calls: output.calls.cached,
        };
        let mut metrics = lock(&self.metrics);
        metrics.estimated_cost_usd += cost;
        // Saturating: token counts come from upstreams.
        metrics.total_input_tokens = metrics
            .total_input_tokens
            .saturating_add(output.usage.input_tokens);
        metrics.total_output_tokens = metrics
            .total_output_tokens
            .saturating_add(output.usage.output_tokens);
        metrics.cache_hits += u32::from(output.cache_hit());
        metrics.calls = metrics.calls.saturating_add(output.calls.total);
        metrics.cached_calls = metrics.cached_calls.saturating_add(output.calls.cached);
        metrics.agents.push(record.clone());
        (
            record,
            metrics
                .total_input_tokens
                .saturating_add(metrics.total_output_tokens),
        )
    }

    pub(super) fn record_agent_metrics(
        &self,
        agent: AgentName,
        provider: &str,
        model: &str,
        usage: api::TokenUsage,
        cost: f64,
        elapsed: Duration,
    ) {
        let metrics = &self.settings.metrics;
        metrics.observe_agent(agent.as_str(), provider, elapsed);
        let agent = agent.as_str();
        for (kind, tokens) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            if tokens > 0 {
                metrics
                    .llm_tokens
                    .get_or_create(&metrics::TokenLabels {
                        agent,
                        model: model.to_string(),
                        kind,
                    })
                    .inc_by(tokens);
            }
        }
        if cost > 0.0 {
            metrics
                .llm_cost
                .get_or_create(&metrics::AgentModel {
                    agent,
                    model: model.to_string(),
                })
                .inc_by(cost);
        }
    }
}
