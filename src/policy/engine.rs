//! The policy engine: compile once, decide on every thread without a lock.
//!
//! A loaded policy is compiled to a regorus RVM program ([`Loaded`]) and
//! shared read-only. Each thread keeps its own VM for it (a VM is mutable
//! while it runs) and its own bounded memo of decisions; the only shared
//! state read on the hot path is one atomic generation counter, so decisions
//! scale with cores. A reload compiles and smoke-evaluates the new policy
//! first, then swaps it in under a mutex and bumps the generation; each
//! thread notices at its next decision and rebuilds its VM and memo.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;

use super::action::Action;
use super::analysis::{self, InputUse};
use super::decision::{Answer, Decision, reason};
use super::input::PolicyInput;
use super::source::{Bundle, DataSource, ModuleSource, Sources};
use crate::audit::{AuditEvent, Outcome};
use crate::cache::lock;
use crate::error::PolicyError;
use crate::{ConfigError, Principal};

/// The entrypoint evaluated for every decision unless configured otherwise.
pub(crate) const DEFAULT_ENTRYPOINT: &str = "data.mcp.authz.allow";
/// The reasons rule read on a denial unless configured otherwise.
pub(crate) const DEFAULT_REASONS_RULE: &str = "data.mcp.authz.reasons";
/// The required-scopes rule read on a denial unless configured otherwise.
pub(crate) const DEFAULT_REQUIRED_SCOPES_RULE: &str = "data.mcp.authz.required_scopes";
/// The per-caller limits rule read unless configured otherwise.
pub(crate) const DEFAULT_LIMITS_RULE: &str = "data.mcp.authz.limits";
/// The confirmation rule read on an allow unless configured otherwise.
pub(crate) const DEFAULT_CONFIRM_RULE: &str = "data.mcp.authz.confirm";
/// The `action` of the input the limits rule is evaluated with.
pub(crate) const LIMITS_ACTION: &str = "rmcp-guard/limits";
/// How many decisions each thread memoizes per policy unless configured otherwise.
pub(crate) const DEFAULT_MEMO_CAPACITY: usize = 4096;
/// The instruction budget of one evaluation unless configured otherwise.
pub(crate) const DEFAULT_MAX_INSTRUCTIONS: usize = 100_000;

/// How many engines' VMs one thread keeps before it drops the oldest.
const WORKERS_PER_THREAD: usize = 8;

/// Which Rego syntax the modules are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RegoVersion {
    /// Each module is parsed as Rego v1 and, if that fails, as v0; a module
    /// that parses as both means the same in both.
    #[default]
    Auto,
    /// Rego v1 only (`allow if { ... }`, `contains`).
    V1,
    /// Rego v0 only (`allow { ... }`, as OPA before 1.0); a module can still
    /// opt in to v1 with `import rego.v1`.
    V0,
}

#[derive(Debug, Clone)]
struct Options {
    entrypoint: String,
    reasons_rule: Option<String>,
    required_scopes_rule: Option<String>,
    limits_rule: Option<String>,
    confirm_rule: Option<String>,
    rego_version: RegoVersion,
    memoize: bool,
    memo_capacity: usize,
    max_instructions: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            entrypoint: DEFAULT_ENTRYPOINT.to_owned(),
            reasons_rule: Some(DEFAULT_REASONS_RULE.to_owned()),
            required_scopes_rule: Some(DEFAULT_REQUIRED_SCOPES_RULE.to_owned()),
            limits_rule: Some(DEFAULT_LIMITS_RULE.to_owned()),
            confirm_rule: Some(DEFAULT_CONFIRM_RULE.to_owned()),
            rego_version: RegoVersion::Auto,
            memoize: true,
            memo_capacity: DEFAULT_MEMO_CAPACITY,
            max_instructions: DEFAULT_MAX_INSTRUCTIONS,
        }
    }
}

/// Builds a [`PolicyEngine`]; see [`PolicyEngine::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PolicyEngineBuilder {
    sources: Sources,
    options: Options,
}

impl PolicyEngineBuilder {
    /// Add a Rego module given as text; `name` appears in compile errors.
    /// Defaults to no modules (at least one is required).
    pub fn module(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.sources.modules.push(ModuleSource::Inline {
            name: name.into(),
            text: text.into(),
        });
        self
    }

    /// Add a `.rego` file; it is read at [`build`](Self::build) and again on
    /// every [`PolicyEngine::reload`]. Defaults to no files.
    pub fn module_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.sources.modules.push(ModuleSource::File(path.into()));
        self
    }

    /// Add a directory: every `*.rego` in it (recursively, except
    /// `*_test.rego`) is a module and every `*.json` a data document, read at
    /// build and on every reload. Defaults to no directories.
    pub fn directory(mut self, path: impl Into<PathBuf>) -> Self {
        self.sources.modules.push(ModuleSource::Directory(path.into()));
        self
    }

    /// Add a `.rego` file or a directory, whichever `path` is. Defaults to none.
    pub fn path(self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        if path.is_dir() {
            self.directory(path)
        } else {
            self.module_file(path)
        }
    }

    /// Add a JSON data document, merged under `data`. Defaults to none.
    pub fn data(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.sources.data.push(DataSource::Inline {
            name: name.into(),
            value,
        });
        self
    }

    /// Add a JSON data file, read at build and on every reload. Defaults to none.
    pub fn data_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.sources.data.push(DataSource::File(path.into()));
        self
    }

    /// The rule whose value decides: it must be declared, and anything but
    /// `true` denies. Defaults to `data.mcp.authz.allow`.
    pub fn entrypoint(mut self, rule: impl Into<String>) -> Self {
        self.options.entrypoint = rule.into();
        self
    }

    /// The rule (a set or array of strings) read on a denial to say why;
    /// ignored when no module declares it. Defaults to `data.mcp.authz.reasons`.
    pub fn reasons_rule(mut self, rule: Option<&str>) -> Self {
        self.options.reasons_rule = rule.map(str::to_owned);
        self
    }

    /// The rule (a set or array of scope strings) read on a denial to say
    /// which scopes would grant it; ignored when no module declares it.
    /// Defaults to `data.mcp.authz.required_scopes`.
    pub fn required_scopes_rule(mut self, rule: Option<&str>) -> Self {
        self.options.required_scopes_rule = rule.map(str::to_owned);
        self
    }

    /// The rule read for a caller's request limits (an object such as
    /// `{"rate": "100/min", "in_flight": 4}`; see
    /// [`PolicyEngine::limits`]); ignored when no module declares it.
    /// Defaults to `data.mcp.authz.limits`.
    pub fn limits_rule(mut self, rule: Option<&str>) -> Self {
        self.options.limits_rule = rule.map(str::to_owned);
        self
    }

    /// The rule read on an allowed decision to say whether the user must
    /// confirm the action first ([`Decision::confirmation_required`]);
    /// ignored when no module declares it. `true` requires confirmation;
    /// `false` or undefined does not; an evaluation error or any other value
    /// requires it (fail closed). [`Guarded`](super::Guarded) asks the user
    /// through MCP elicitation before a `tools/call`, `prompts/get` or
    /// `resources/read` that needs it runs:
    ///
    /// ```rego
    /// confirm if {
    ///     input.action == "tools/call"
    ///     input.resource == "deploy_template"
    /// }
    /// ```
    ///
    /// Defaults to `data.mcp.authz.confirm`.
    pub fn confirm_rule(mut self, rule: Option<&str>) -> Self {
        self.options.confirm_rule = rule.map(str::to_owned);
        self
    }

    /// The Rego syntax of the modules. Defaults to `RegoVersion::Auto`.
    pub fn rego_version(mut self, version: RegoVersion) -> Self {
        self.options.rego_version = version;
        self
    }

    /// Memoize decisions when the policy provably reads neither
    /// `input.arguments` nor the input as a whole (see the module docs of
    /// `analysis`). Defaults to `true`.
    pub fn memoize(mut self, memoize: bool) -> Self {
        self.options.memoize = memoize;
        self
    }

    /// How many decisions each thread keeps per policy version; the memo is
    /// emptied when full. Defaults to `4096`.
    pub fn memo_capacity(mut self, capacity: usize) -> Self {
        self.options.memo_capacity = capacity;
        self
    }

    /// The instruction budget of one evaluation; a policy that exceeds it
    /// denies with `policy_error`. Defaults to `100000`.
    pub fn max_instructions(mut self, max: usize) -> Self {
        self.options.max_instructions = max;
        self
    }

    /// Read, compile and smoke-evaluate the policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when a source cannot be read, a module does not
    /// compile, a data document is not a JSON object, the entrypoint is not
    /// declared, or the smoke evaluation errs or yields a non-boolean.
    pub fn build(self) -> Result<PolicyEngine, ConfigError> {
        let bundle = self.sources.load()?;
        let loaded = compile(&bundle, &self.options, 0)?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(PolicyEngine {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                generation: AtomicU64::new(0),
                reads_arguments: AtomicBool::new(loaded.reads_arguments()),
                current: Mutex::new(Arc::new(loaded)),
                reload: Mutex::new(()),
                sources: self.sources,
                options: self.options,
            }),
        })
    }
}

/// A compiled policy version, shared read-only by every thread.
struct Loaded {
    generation: u64,
    version: Arc<str>,
    program: Arc<Program>,
    /// The same policy for regorus' interpreter, which confirms every allow
    /// (see `Worker::run`).
    confirm: regorus::CompiledPolicy,
    data: regorus::Value,
    entrypoint: String,
    reasons_rule: Option<String>,
    required_scopes_rule: Option<String>,
    limits_rule: Option<String>,
    /// The confirmation rule, when declared, and the same rule for regorus'
    /// interpreter (which double-checks a VM "no": see `confirm`).
    confirm_rule: Option<(String, regorus::CompiledPolicy)>,
    /// `Some(fields)` when the policy provably reads only these input
    /// fields (and not `arguments`): the input is trimmed to them, and
    /// decisions are memoized keyed by them when memoization is on.
    input_fields: Option<Vec<&'static str>>,
    memoize: bool,
    memo_capacity: usize,
    max_instructions: usize,
}

impl Loaded {
    /// Whether this policy may read `input.arguments`: it names them, or
    /// the scan could not tell.
    fn reads_arguments(&self) -> bool {
        self.input_fields
            .as_ref()
            .is_none_or(|fields| fields.contains(&"arguments"))
    }
}

struct Shared {
    id: u64,
    generation: AtomicU64,
    current: Mutex<Arc<Loaded>>,
    /// Serializes reloads (not decisions).
    reload: Mutex<()>,
    /// Whether the policy in force may read `input.arguments`, kept beside
    /// `current` so that the step-up layer asks without taking its lock.
    reads_arguments: AtomicBool,
    sources: Sources,
    options: Options,
}

/// The Rego policy that decides who may do what.
///
/// Cheap to clone (one reference count); clones share the policy and see
/// every reload. Decisions never take a lock: see the module docs.
///
/// ```
/// # fn main() -> Result<(), rmcp_guard::ConfigError> {
/// use rmcp_guard::Principal;
/// use rmcp_guard::policy::{Action, PolicyEngine, PolicyInput};
///
/// let engine = PolicyEngine::builder()
///     .module("authz.rego", r#"
///         package mcp.authz
///         default allow := false
///         allow if "admin" in input.groups
///     "#)
///     .build()?;
/// let root = Principal::unverified("https://idp", "root").groups(["admin"]).build();
/// assert!(engine.decide(&PolicyInput::new(&root, "anything", Action::CallTool)).allowed());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PolicyEngine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("version", &self.version())
            .field("entrypoint", &self.shared.options.entrypoint)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Start configuring an engine.
    pub fn builder() -> PolicyEngineBuilder {
        PolicyEngineBuilder::default()
    }

    /// An engine for a `.rego` file or a directory of `.rego` and `.json`
    /// files, with every other setting at its default.
    ///
    /// # Errors
    ///
    /// As [`PolicyEngineBuilder::build`].
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::builder().path(path).build()
    }

    /// The version (content hash) of the policy now in force.
    pub fn version(&self) -> String {
        lock(&self.shared.current).version.to_string()
    }

    /// Whether decisions of the policy now in force may be memoized.
    pub fn is_memoized(&self) -> bool {
        let loaded = lock(&self.shared.current);
        loaded.memoize
            && loaded
                .input_fields
                .as_ref()
                .is_some_and(|fields| !fields.contains(&"arguments"))
    }

    /// Whether the policy now in force may read `input.arguments` (it names
    /// them, or the scan could not tell): then a decision made without the
    /// arguments may not be the one made with them.
    pub(crate) fn may_read_arguments(&self) -> bool {
        self.shared.reads_arguments.load(Ordering::Acquire)
    }

    /// Decide, and emit one audit event for the decision.
    pub fn decide(&self, input: &PolicyInput) -> Decision {
        let decision = self.evaluate(input);
        AuditEvent::PolicyDecision {
            principal: Some(input.principal()),
            resource: input.resource(),
            action: input.action().as_str(),
            outcome: decision.outcome(),
            reason: decision.reason().unwrap_or(""),
            policy_version: decision.policy_version(),
            duration_us: u64::try_from(decision.duration().as_micros()).unwrap_or(u64::MAX),
            cached: decision.from_cache(),
        }
        .emit();
        decision
    }

    /// Decide without an audit event: for listings (filtered per item, one
    /// event per listing) and offline tools such as a permission matrix.
    pub fn evaluate(&self, input: &PolicyInput) -> Decision {
        let start = Instant::now();
        let generation = self.shared.generation.load(Ordering::Acquire);
        let result = WORKERS.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut workers) => {
                let worker = self.worker(&mut workers, generation);
                worker.decide(input)
            }
            // Re-entered on this thread (a tracing subscriber that decides?):
            // use a one-off worker rather than fail.
            Err(_) => Worker::new(self.shared.id, self.current()).decide(input),
        });
        let (answer, version, cached) = result.unwrap_or_else(|_| {
            // Thread-local storage is being torn down: one-off worker.
            Worker::new(self.shared.id, self.current()).decide(input)
        });
        Decision {
            answer,
            policy_version: version,
            duration: start.elapsed(),
            cached,
        }
    }

    /// The value of the limits rule ([`PolicyEngineBuilder::limits_rule`])
    /// for `principal`, as JSON: `None` when no module declares the rule or
    /// it is undefined for this caller. Evaluated with the caller's input,
    /// `action` `"rmcp-guard/limits"` and an empty `resource`; not audited,
    /// not memoized. [`RequestLimits`](crate::limit::RequestLimits) reads it
    /// through the policy's [`LimitSource`](crate::limit::LimitSource).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use rmcp_guard::Principal;
    /// use rmcp_guard::policy::PolicyEngine;
    ///
    /// let engine = PolicyEngine::builder()
    ///     .module("authz.rego", r#"
    ///         package mcp.authz
    ///         default allow := false
    ///         limits := {"rate": "600/min", "in_flight": 32} if "batch" in input.groups
    ///     "#)
    ///     .build()?;
    /// let batch = Principal::unverified("https://idp", "etl").groups(["batch"]).build();
    /// assert_eq!(engine.limits(&batch)?.unwrap()["rate"], "600/min");
    /// let alice = Principal::unverified("https://idp", "alice").build();
    /// assert!(engine.limits(&alice)?.is_none());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`PolicyError::Evaluation`] when the evaluation fails.
    pub fn limits(&self, principal: &Principal) -> Result<Option<serde_json::Value>, PolicyError> {
        let input = PolicyInput::new(principal, "", Action::method(LIMITS_ACTION));
        let generation = self.shared.generation.load(Ordering::Acquire);
        let result = WORKERS.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut workers) => self.worker(&mut workers, generation).limits(&input),
            Err(_) => Worker::new(self.shared.id, self.current()).limits(&input),
        });
        result
            .unwrap_or_else(|_| Worker::new(self.shared.id, self.current()).limits(&input))
            .map_err(|message| PolicyError::Evaluation { message })
    }

    fn current(&self) -> Arc<Loaded> {
        lock(&self.shared.current).clone()
    }

    fn worker<'w>(&self, workers: &'w mut Vec<Worker>, generation: u64) -> &'w mut Worker {
        let id = self.shared.id;
        let index = match workers.iter().position(|w| w.engine_id == id) {
            Some(i) => i,
            None => {
                if workers.len() >= WORKERS_PER_THREAD {
                    workers.remove(0);
                }
                workers.push(Worker::new(id, self.current()));
                workers.len() - 1
            }
        };
        let worker = &mut workers[index];
        if worker.loaded.generation < generation {
            *worker = Worker::new(id, self.current());
        }
        worker
    }

    /// Read the sources again and, if they changed, compile and
    /// smoke-evaluate the new policy, then swap it in atomically. On any
    /// error the policy in force keeps serving, an error event is emitted on
    /// the audit target, and the error is returned.
    ///
    /// Returns the version in force afterwards.
    ///
    /// # Errors
    ///
    /// As [`PolicyEngineBuilder::build`].
    pub fn reload(&self) -> Result<String, ConfigError> {
        let _one_at_a_time = lock(&self.shared.reload);
        let previous = self.current();
        let result = self.shared.sources.load().and_then(|bundle| {
            if bundle.version(&rules(&self.shared.options)) == *previous.version {
                return Ok(None);
            }
            compile(&bundle, &self.shared.options, previous.generation + 1).map(Some)
        });
        match result {
            Ok(None) => Ok(previous.version.to_string()),
            Ok(Some(loaded)) => {
                let version = loaded.version.to_string();
                let generation = loaded.generation;
                self.shared
                    .reads_arguments
                    .store(loaded.reads_arguments(), Ordering::Release);
                *lock(&self.shared.current) = Arc::new(loaded);
                self.shared.generation.store(generation, Ordering::Release);
                AuditEvent::PolicyReload {
                    outcome: Outcome::Allow,
                    previous_version: &previous.version,
                    policy_version: &version,
                    error: None,
                }
                .emit();
                Ok(version)
            }
            Err(error) => {
                AuditEvent::PolicyReload {
                    outcome: Outcome::Error,
                    previous_version: &previous.version,
                    policy_version: &previous.version,
                    error: Some(&error),
                }
                .emit();
                Err(error)
            }
        }
    }

    /// Reload every `period` (see [`reload`](Self::reload); unchanged
    /// sources cost one read and one hash). The task ends when every clone
    /// of this engine is dropped. Must be called within a Tokio runtime.
    pub fn spawn_reload_every(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let engine = PolicyEngine { shared };
                // Compiling is CPU work: keep it off the async workers. The
                // outcome is already reported by `reload`.
                let _ = tokio::task::spawn_blocking(move || engine.reload()).await;
            }
        })
    }
}

fn rules(options: &Options) -> Vec<&str> {
    let mut rules = vec![options.entrypoint.as_str()];
    rules.extend(options.reasons_rule.as_deref());
    rules.extend(options.required_scopes_rule.as_deref());
    rules
}

fn add_module(
    engine: &mut regorus::Engine,
    name: &str,
    text: &str,
    version: RegoVersion,
) -> Result<String, ConfigError> {
    let mut attempt = |v0: bool| {
        engine.set_rego_v0(v0);
        engine.add_policy(name.to_owned(), text.to_owned())
    };
    let result = match version {
        RegoVersion::V1 => attempt(false),
        RegoVersion::V0 => attempt(true),
        RegoVersion::Auto => attempt(false).or_else(|v1_error| attempt(true).map_err(|_| v1_error)),
    };
    result.map_err(|e| {
        PolicyError::Compile {
            module: name.to_owned(),
            message: e.to_string(),
        }
        .into()
    })
}

/// Whether some module declares `rule` (a full path such as `data.a.b.c`).
fn declared(engine: &regorus::Engine, packages: &[(String, String)], rule: &str) -> bool {
    packages.iter().any(|(module, package)| {
        rule.strip_prefix(package.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|root| engine.has_declared_rule_rooted_at(module, root).unwrap_or(false))
    })
}

fn compile(bundle: &Bundle, options: &Options, generation: u64) -> Result<Loaded, ConfigError> {
    let mut engine = regorus::Engine::new();
    let mut packages = Vec::with_capacity(bundle.modules.len());
    for (name, text) in &bundle.modules {
        let package = add_module(&mut engine, name, text, options.rego_version)?;
        packages.push((name.clone(), package));
    }
    for (name, value) in &bundle.data {
        if !value.is_object() {
            return Err(PolicyError::Data {
                document: name.clone(),
                message: "a data document must be a JSON object".to_owned(),
            }
            .into());
        }
        engine
            .add_data(regorus::Value::from(value.clone()))
            .map_err(|e| PolicyError::Data {
                document: name.clone(),
                message: e.to_string(),
            })?;
    }
    if !declared(&engine, &packages, &options.entrypoint) {
        return Err(PolicyError::Entrypoint {
            entrypoint: options.entrypoint.clone(),
        }
        .into());
    }
    let optional = |rule: &Option<String>| rule.as_ref().filter(|r| declared(&engine, &packages, r)).cloned();
    let reasons_rule = optional(&options.reasons_rule);
    let required_scopes_rule = optional(&options.required_scopes_rule);
    let limits_rule = optional(&options.limits_rule);
    let confirm_rule = optional(&options.confirm_rule);

    let whole = |e: &dyn std::fmt::Display| PolicyError::Compile {
        module: "(policy)".to_owned(),
        message: e.to_string(),
    };
    let entry: regorus::Rc<str> = options.entrypoint.as_str().into();
    // A builtin error is an error, not "undefined" (which `not rule` would
    // turn into true).
    engine.set_strict_builtin_errors(true);
    let compiled = engine.compile_with_entrypoint(&entry).map_err(|e| whole(&e))?;
    let mut entrypoints = vec![options.entrypoint.as_str()];
    entrypoints.extend(reasons_rule.as_deref());
    entrypoints.extend(required_scopes_rule.as_deref());
    entrypoints.extend(limits_rule.as_deref());
    entrypoints.extend(confirm_rule.as_deref());
    let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(&compiled, &entrypoints)
        .map_err(|e| whole(&e))?;

    let confirm_rule = match confirm_rule {
        Some(rule) => {
            let entry: regorus::Rc<str> = rule.as_str().into();
            let compiled = engine.compile_with_entrypoint(&entry).map_err(|e| whole(&e))?;
            Some((rule, compiled))
        }
        None => None,
    };

    let input_fields = match analysis::scan(bundle.modules.iter().map(|(_, t)| t.as_str())) {
        InputUse::Fields(fields) => Some(fields),
        InputUse::Opaque(why) => {
            tracing::debug!(why, "policy decisions are not memoized");
            None
        }
    };

    let loaded = Loaded {
        generation,
        version: bundle.version(&rules(options)).into(),
        program,
        confirm: compiled,
        data: engine.get_data(),
        entrypoint: options.entrypoint.clone(),
        reasons_rule,
        required_scopes_rule,
        limits_rule,
        confirm_rule,
        input_fields,
        memoize: options.memoize && options.memo_capacity > 0,
        memo_capacity: options.memo_capacity,
        max_instructions: options.max_instructions,
    };
    smoke(&loaded)?;
    Ok(loaded)
}

/// Evaluate once with a caller who has nothing: it must not err and must
/// yield a boolean (or be undefined, which denies).
fn smoke(loaded: &Loaded) -> Result<(), PolicyError> {
    let nobody = Principal::unverified("urn:rmcp-guard:smoke", "smoke-test").build();
    let input = PolicyInput::new(&nobody, "smoke-test", Action::CallTool);
    let mut vm = new_vm(loaded).map_err(|e| PolicyError::Smoke { message: e.to_string() })?;
    vm.set_input(regorus::Value::from(input.to_json()));
    match vm.execute_entry_point_by_name(&loaded.entrypoint) {
        Ok(regorus::Value::Bool(_) | regorus::Value::Undefined) => Ok(()),
        Ok(other) => Err(PolicyError::Smoke {
            message: format!("{} is not a boolean: {other}", loaded.entrypoint),
        }),
        Err(e) => Err(PolicyError::Smoke { message: e.to_string() }),
    }
}

fn new_vm(loaded: &Loaded) -> Result<RegoVM, regorus::rvm::vm::VmError> {
    let mut vm = RegoVM::new();
    vm.load_program(loaded.program.clone());
    vm.set_max_instructions(loaded.max_instructions);
    // A builtin error (a claim of the wrong type given to `endswith`...) is
    // an evaluation error, which denies; regorus' default turns it into
    // "undefined", and a `not deny` rule would then allow.
    vm.set_strict_builtin_errors(true);
    vm.set_data(loaded.data.clone())?;
    Ok(vm)
}

thread_local! {
    static WORKERS: RefCell<Vec<Worker>> = const { RefCell::new(Vec::new()) };
}

/// One thread's evaluation state for one engine.
struct Worker {
    engine_id: u64,
    /// Whether this policy's decisions are memoized (computed once).
    memoizing: bool,
    /// This thread's copy of the policy version.
    version: Arc<str>,
    loaded: Arc<Loaded>,
    /// `None` when the VM could not be set up (data rejected): deny.
    vm: Option<RegoVM>,
    memo: HashMap<Box<[u8]>, Arc<Answer>>,
    key: Vec<u8>,
}

impl Worker {
    fn new(engine_id: u64, loaded: Arc<Loaded>) -> Self {
        let vm = match new_vm(&loaded) {
            Ok(vm) => Some(vm),
            Err(error) => {
                tracing::error!(%error, "policy VM setup failed; denying");
                None
            }
        };
        let memoizing = loaded.memoize
            && loaded
                .input_fields
                .as_ref()
                .is_some_and(|fields| !fields.contains(&"arguments"));
        Self {
            engine_id,
            memoizing,
            // A copy per thread: decisions clone it, and a shared reference
            // count would bounce one cache line between cores.
            version: Arc::from(&*loaded.version),
            loaded,
            vm,
            memo: HashMap::new(),
            key: Vec::new(),
        }
    }

    fn decide(&mut self, input: &PolicyInput) -> (Arc<Answer>, Arc<str>, bool) {
        let version = self.version.clone();
        let memo_fields = self.memoizing.then_some(()).and(self.loaded.input_fields.as_ref());
        if let Some(fields) = memo_fields {
            self.key.clear();
            for field in fields {
                input.write_key_field(field, &mut self.key);
            }
            if let Some(hit) = self.memo.get(self.key.as_slice()) {
                return (hit.clone(), version, true);
            }
        }
        let outcome = Arc::new(self.run(input));
        if self.memoizing && outcome.outcome != Outcome::Error {
            if self.memo.len() >= self.loaded.memo_capacity {
                self.memo.clear();
            }
            self.memo.insert(self.key.clone().into_boxed_slice(), outcome.clone());
        }
        (outcome, version, false)
    }

    /// The limits rule's value for `input`; `None` when not declared or undefined.
    fn limits(&mut self, input: &PolicyInput) -> Result<Option<serde_json::Value>, String> {
        let Some(rule) = self.loaded.limits_rule.as_deref() else {
            return Ok(None);
        };
        let Some(vm) = self.vm.as_mut() else {
            return Err("the policy VM could not be set up".to_owned());
        };
        let document = match &self.loaded.input_fields {
            Some(fields) => input.to_json_fields(fields),
            None => input.to_json(),
        };
        vm.set_input(regorus::Value::from(document));
        match vm.execute_entry_point_by_name(rule) {
            Ok(regorus::Value::Undefined) => Ok(None),
            Ok(value) => serde_json::to_value(&value).map(Some).map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        }
    }

    fn run(&mut self, input: &PolicyInput) -> Answer {
        let Some(vm) = self.vm.as_mut() else {
            return Answer::fault(reason::EVAL_ERROR);
        };
        let loaded = &self.loaded;
        let document = match &loaded.input_fields {
            // The policy reads nothing else: skip converting the rest.
            Some(fields) => input.to_json_fields(fields),
            None => input.to_json(),
        };
        let failed = |error: &dyn std::fmt::Display| {
            tracing::warn!(
                %error,
                policy_version = %loaded.version,
                action = %input.action(),
                resource = input.resource(),
                "policy evaluation failed; denying"
            );
            Answer::fault(reason::EVAL_ERROR)
        };
        let rego_input = regorus::Value::from(document);
        vm.set_input(rego_input.clone());
        let allowed = match vm.execute_entry_point_by_name(&loaded.entrypoint) {
            Ok(regorus::Value::Bool(b)) => b,
            Ok(regorus::Value::Undefined) => return Answer::fault(reason::UNDEFINED),
            Ok(_) => return Answer::fault(reason::NOT_BOOLEAN),
            Err(error) => return failed(&error),
        };
        if allowed {
            // regorus' VM (0.14) drops an error raised inside a rule body even
            // with strict builtin errors: `blocked if endswith(input.claims.email,
            // ...)` is undefined for an email of the wrong type, and `not blocked`
            // allows. Its interpreter keeps the error. An allow stands only if
            // the interpreter also yields `true`; memoized allows skip this.
            match loaded.confirm.eval_with_input(rego_input.clone()) {
                Ok(regorus::Value::Bool(true)) => {}
                Ok(_) => return Answer::fault(reason::NOT_CONFIRMED),
                Err(error) => return failed(&error),
            }
            let confirm = confirm(vm, loaded, rego_input);
            return Answer {
                outcome: Outcome::Allow,
                reasons: Vec::new(),
                required_scopes: Vec::new(),
                confirm,
            };
        }
        let mut strings = |rule: &Option<String>| -> Vec<String> {
            let Some(rule) = rule else { return Vec::new() };
            match vm.execute_entry_point_by_name(rule) {
                Ok(value) => string_list(&value),
                Err(error) => {
                    tracing::debug!(%error, rule, "policy explanation rule failed");
                    Vec::new()
                }
            }
        };
        let mut reasons = strings(&loaded.reasons_rule);
        let required_scopes = strings(&loaded.required_scopes_rule);
        if reasons.is_empty() {
            reasons.push(reason::DENIED.to_owned());
        }
        Answer {
            outcome: Outcome::Deny,
            reasons,
            required_scopes,
            confirm: false,
        }
    }
}

/// Whether the confirmation rule requires the user to confirm an allowed
/// action: its VM value `true`, or, when the VM says anything else, the
/// interpreter's (regorus' VM drops an error raised inside a rule body,
/// which would read as "no confirmation"). An error or a value that is not
/// a boolean requires confirmation.
fn confirm(vm: &mut RegoVM, loaded: &Loaded, input: regorus::Value) -> bool {
    let Some((rule, interpreter)) = &loaded.confirm_rule else {
        return false;
    };
    let says = |value: Result<regorus::Value, String>| match value {
        Ok(regorus::Value::Bool(b)) => b,
        Ok(regorus::Value::Undefined) => false,
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, rule, "confirmation rule failed; confirmation required");
            true
        }
    };
    // The VM already holds `input`.
    says(vm.execute_entry_point_by_name(rule).map_err(|e| e.to_string()))
        || says(interpreter.eval_with_input(input).map_err(|e| e.to_string()))
}

/// The strings of a set or array (sorted, deduplicated); nothing otherwise.
fn string_list(value: &regorus::Value) -> Vec<String> {
    let mut out: Vec<String> = match value {
        regorus::Value::Set(items) => items
            .iter()
            .filter_map(|v| v.as_string().ok().map(|s| s.to_string()))
            .collect(),
        regorus::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_string().ok().map(|s| s.to_string()))
            .collect(),
        regorus::Value::String(s) => vec![s.to_string()],
        _ => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whether_a_policy_may_read_arguments_is_known_without_deciding() {
        let plain = PolicyEngine::default_policy("mcp:tools").unwrap();
        assert!(!plain.may_read_arguments());
        let names = PolicyEngine::builder()
            .module(
                "p.rego",
                "package mcp.authz\nimport rego.v1\nallow if input.arguments.env == \"dev\"\n",
            )
            .build()
            .unwrap();
        assert!(names.may_read_arguments());
        let opaque = PolicyEngine::builder()
            .module(
                "p.rego",
                "package mcp.authz\nimport rego.v1\nallow if input[\"subject\"] == \"a\"\n",
            )
            .build()
            .unwrap();
        assert!(opaque.may_read_arguments());
        // A reload updates it.
        let dir = std::env::temp_dir().join(format!("rmcp-guard-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.rego");
        std::fs::write(
            &file,
            "package mcp.authz\nimport rego.v1\nallow if input.subject == \"a\"\n",
        )
        .unwrap();
        let engine = PolicyEngine::builder().module_file(&file).build().unwrap();
        assert!(!engine.may_read_arguments());
        std::fs::write(
            &file,
            "package mcp.authz\nimport rego.v1\nallow if input.arguments.x == 1\n",
        )
        .unwrap();
        engine.reload().unwrap();
        assert!(engine.may_read_arguments());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_have_their_documented_defaults() {
        assert_eq!(DEFAULT_ENTRYPOINT, "data.mcp.authz.allow");
        assert_eq!(DEFAULT_REASONS_RULE, "data.mcp.authz.reasons");
        assert_eq!(DEFAULT_REQUIRED_SCOPES_RULE, "data.mcp.authz.required_scopes");
        assert_eq!(DEFAULT_LIMITS_RULE, "data.mcp.authz.limits");
        assert_eq!(DEFAULT_CONFIRM_RULE, "data.mcp.authz.confirm");
        assert_eq!(DEFAULT_MEMO_CAPACITY, 4096);
        assert_eq!(DEFAULT_MAX_INSTRUCTIONS, 100_000);
    }
}
