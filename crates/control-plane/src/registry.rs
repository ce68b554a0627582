//! The agents this control plane knows, connected or not, by agent id.
//!
//! A reconnecting agent (same `agent_id`) replaces its older session: the
//! registry hands back the old session's cancellation token so the caller can
//! close it, and the old session's own "disconnected" report is ignored
//! because its session id no longer matches. Disconnected agents are kept,
//! because "when did we last hear from it" is what operators ask, but the
//! total is capped: the agent silent for longest is forgotten first.
//!
//! Each agent also carries the last [`JobState`] it reported per job, for the
//! console. Bounded: at most [`MAX_JOB_STATES_PER_AGENT`] jobs per agent, at
//! most [`MAX_PARTITIONS_PER_STATE`] partitions and [`MAX_ERROR_MESSAGE`]
//! bytes of error message per state; a new session starts with none (the
//! agent reports again at once).

use super::status::{self, AgentStatus, AuthFailure, Facts, Health, Refusal};
use connectivity_common::timefmt;
use connectivity_protocol::HostFacts;
use connectivity_protocol::job::{JobError, JobPhase, JobState};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Whether an agent has a live session (the console's richer state, with
/// its reason, is [`AgentRecord::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Connected,
    Disconnected,
}

/// What the console shows about one agent. Fields are only ever added.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub group: String,
    /// The agent's package version.
    pub version: String,
    pub protocol_version: u32,
    pub host: HostFacts,
    /// The proxy the agent connects through, as it reported it.
    pub proxy: Option<String>,
    pub state: AgentState,
    /// The state the console shows, with its reason, computed when read
    /// (`docs/CONTROL_PLANE.md`, *Agent states*).
    pub status: AgentStatus,
    /// Seconds since the current session started; none without a session.
    pub uptime_secs: Option<u64>,
    /// The credentials it authenticated with, e.g. `user "agent"`.
    pub principal: String,
    pub remote_addr: String,
    /// Current (or last) session.
    pub session_id: String,
    /// Start of the current (or last) session.
    #[serde(serialize_with = "timefmt::serialize")]
    pub connected_since: SystemTime,
    /// Time of the last message of any kind from the agent (heartbeats
    /// come every `heartbeat_interval_ms`).
    #[serde(serialize_with = "timefmt::serialize")]
    pub last_seen: SystemTime,
    #[serde(serialize_with = "timefmt::serialize_opt")]
    pub disconnected_at: Option<SystemTime>,
    /// Why the last session ended (heartbeat timeout, goodbye, replaced...).
    pub disconnect_reason: Option<String>,
    /// Sessions opened since the control plane started; a climbing number
    /// means a flapping connection.
    pub sessions: u64,
    /// The jobs it reported on, by job id (details: `GET /api/v1/jobs/{id}`).
    pub jobs: Vec<JobSummary>,
}

/// Most jobs whose state is kept per agent.
pub const MAX_JOB_STATES_PER_AGENT: usize = 256;
/// Most partitions kept per reported job state (the lowest numbers).
pub const MAX_PARTITIONS_PER_STATE: usize = 1024;
/// Longest job error message kept, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 2048;

/// One line per job in an agent's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSummary {
    pub job_id: String,
    pub phase: JobPhase,
    pub error: Option<JobError>,
}

/// A job's state as one agent last reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentJobState {
    pub agent_id: String,
    pub agent_name: String,
    /// Whether the agent is connected now: the state of a disconnected
    /// agent is its last word, not the present.
    pub agent_state: AgentState,
    #[serde(serialize_with = "timefmt::serialize")]
    pub reported_at: SystemTime,
    /// Records relayed per second, from this agent's last two reports at
    /// least a second apart.
    pub records_per_sec: f64,
    #[serde(flatten)]
    pub state: JobState,
}

/// A session that has just been welcomed.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub agent_id: String,
    pub agent_name: String,
    pub group: String,
    pub version: String,
    pub protocol_version: u32,
    pub host: HostFacts,
    pub proxy: Option<String>,
    pub principal: String,
    pub remote_addr: SocketAddr,
    pub session_id: String,
    /// Cancelled to close this session when a newer one replaces it.
    pub cancel: CancellationToken,
}

/// Every agent slot is taken by a connected agent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the control plane already tracks {0} connected agents, its limit (max_agents)")]
pub struct RegistryFull(pub usize);

struct Entry {
    record: AgentRecord,
    /// The live session's cancel token, while connected.
    cancel: Option<CancellationToken>,
    /// Last reported state per job, with the time it arrived.
    jobs: BTreeMap<String, (JobState, SystemTime)>,
    /// Throughput per job, from successive reports.
    rates: HashMap<String, Rate>,
    /// Since when the agent drains, and its deadline (ms).
    draining: Option<(SystemTime, u64)>,
    said_goodbye: bool,
    had_session: bool,
    /// Its last refused hello.
    refusal: Option<Refusal>,
}

/// Records per second of one job on one agent.
#[derive(Debug, Clone, Copy)]
struct Rate {
    records: u64,
    at: SystemTime,
    per_sec: f64,
}

/// Shortest span over which a rate is computed.
const RATE_MIN_SPAN: Duration = Duration::from_secs(1);

impl Rate {
    fn next(prev: Option<Rate>, records: u64, now: SystemTime) -> Rate {
        let Some(p) = prev else {
            return Rate {
                records,
                at: now,
                per_sec: 0.0,
            };
        };
        if records < p.records {
            // The job restarted on the agent: its counters start again.
            return Rate {
                records,
                at: now,
                per_sec: 0.0,
            };
        }
        match now.duration_since(p.at) {
            Ok(span) if span >= RATE_MIN_SPAN => {
                let per_sec =
                    ((records - p.records) as f64 / span.as_secs_f64() * 10.0).round() / 10.0;
                Rate {
                    records,
                    at: now,
                    per_sec,
                }
            }
            _ => p,
        }
    }
}

impl Entry {
    /// The record with its job summary and status filled in.
    fn view(
        &self,
        now: SystemTime,
        interval: Duration,
        failures: &HashMap<String, AuthFailure>,
    ) -> AgentRecord {
        let mut r = self.record.clone();
        r.status = self.status(now, interval, failures);
        let connected = r.state == AgentState::Connected;
        r.uptime_secs = connected.then(|| {
            now.duration_since(r.connected_since)
                .unwrap_or_default()
                .as_secs()
        });
        r.jobs = self
            .jobs
            .values()
            .map(|(s, _)| JobSummary {
                job_id: s.job_id.clone(),
                phase: s.phase,
                error: s.error.clone(),
            })
            .collect();
        r
    }

    fn status(
        &self,
        now: SystemTime,
        interval: Duration,
        failures: &HashMap<String, AuthFailure>,
    ) -> AgentStatus {
        let r = &self.record;
        status::status(
            &Facts {
                connected: r.state == AgentState::Connected,
                last_seen: r.last_seen,
                disconnected_at: r.disconnected_at,
                disconnect_reason: r.disconnect_reason.as_deref(),
                said_goodbye: self.said_goodbye,
                draining: self.draining,
                refusal: self.refusal.as_ref(),
                auth_failure: failures.get(&r.principal),
                had_session: self.had_session,
            },
            now,
            interval,
        )
    }

    fn health(
        &self,
        now: SystemTime,
        interval: Duration,
        failures: &HashMap<String, AuthFailure>,
    ) -> Health {
        self.status(now, interval, failures).state
    }
}

/// Cut a peer-supplied state down to what the registry keeps.
fn bounded(mut state: JobState) -> JobState {
    if state.partitions.len() > MAX_PARTITIONS_PER_STATE {
        state.partitions.sort_by_key(|p| p.partition);
        state.partitions.truncate(MAX_PARTITIONS_PER_STATE);
    }
    if let Some(e) = state.error.as_mut()
        && e.message.len() > MAX_ERROR_MESSAGE
    {
        let cut = (0..=MAX_ERROR_MESSAGE)
            .rev()
            .find(|&i| e.message.is_char_boundary(i))
            .unwrap_or(0);
        e.message.truncate(cut);
        e.message.push_str("...");
    }
    state
}

/// Per-group counts for the console: sessions, and agents by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupCounts {
    pub total: usize,
    pub connected: usize,
    pub disconnected: usize,
    /// Agents per console state (`connected`, `gone`, ...), every state listed.
    pub states: BTreeMap<&'static str, usize>,
}

/// Principals whose refused logins are remembered.
pub const MAX_AUTH_FAILURES: usize = 1024;

/// The agent registry. Cheap, short critical sections under one mutex.
pub struct Registry {
    capacity: usize,
    heartbeat_interval: Duration,
    agents: Mutex<HashMap<String, Entry>>,
    /// Refused logins by principal (`user "x"`), until one succeeds.
    auth_failures: Mutex<HashMap<String, AuthFailure>>,
}

impl Registry {
    /// A registry for heartbeats every 5 s.
    pub fn new(capacity: usize) -> Self {
        Self::with_heartbeat_interval(capacity, Duration::from_secs(5))
    }

    /// A registry whose agents heartbeat every `interval` (the console
    /// shows an agent silent for two intervals as gone).
    pub fn with_heartbeat_interval(capacity: usize, interval: Duration) -> Self {
        Registry {
            capacity: capacity.max(1),
            heartbeat_interval: interval,
            agents: Mutex::new(HashMap::new()),
            auth_failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, AuthFailure>> {
        self.auth_failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remove the longest-silent disconnected agent if a new one would not
    /// fit; false when every slot holds a connected agent.
    fn make_room(&self, agents: &mut HashMap<String, Entry>, agent_id: &str) -> bool {
        if agents.contains_key(agent_id) || agents.len() < self.capacity {
            return true;
        }
        let oldest = agents
            .iter()
            .filter(|(_, e)| e.record.state == AgentState::Disconnected)
            .min_by_key(|(_, e)| e.record.last_seen)
            .map(|(id, _)| id.clone());
        match oldest {
            Some(id) => {
                tracing::info!(agent_id = %id, "forgetting the longest-silent agent to make room");
                agents.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Record a welcomed session. Returns the token of the session it
    /// replaces, which the caller cancels.
    pub fn connect(&self, s: NewSession) -> Result<Option<CancellationToken>, RegistryFull> {
        let now = SystemTime::now();
        let mut agents = self.lock();
        if !self.make_room(&mut agents, &s.agent_id) {
            return Err(RegistryFull(agents.len()));
        }
        let previous = agents.remove(&s.agent_id);
        let sessions = previous.as_ref().map_or(0, |p| p.record.sessions) + 1;
        let record = AgentRecord {
            id: s.agent_id.clone(),
            name: s.agent_name,
            group: s.group,
            version: s.version,
            protocol_version: s.protocol_version,
            host: s.host,
            proxy: s.proxy,
            state: AgentState::Connected,
            status: AgentStatus {
                state: Health::Connected,
                reason: String::new(),
                since: now,
            },
            uptime_secs: None,
            principal: s.principal,
            remote_addr: s.remote_addr.to_string(),
            session_id: s.session_id,
            connected_since: now,
            last_seen: now,
            disconnected_at: None,
            disconnect_reason: None,
            sessions,
            jobs: Vec::new(),
        };
        let entry = Entry {
            record,
            cancel: Some(s.cancel),
            jobs: BTreeMap::new(),
            rates: HashMap::new(),
            draining: None,
            said_goodbye: false,
            had_session: true,
            refusal: None,
        };
        agents.insert(s.agent_id, entry);
        Ok(previous.and_then(|p| p.cancel))
    }

    /// A hello was refused (`s.session_id` and `s.cancel` are unused). The
    /// agent is remembered, so the console can say why it is not connected.
    pub fn reject(
        &self,
        s: NewSession,
        reason: connectivity_protocol::RejectReason,
        message: &str,
    ) {
        let now = SystemTime::now();
        let refusal = Refusal {
            reason,
            message: message.to_owned(),
            at: now,
            remote_addr: s.remote_addr.to_string(),
        };
        let mut agents = self.lock();
        if let Some(e) = agents.get_mut(&s.agent_id) {
            if e.record.state == AgentState::Disconnected {
                // Show what it runs now, e.g. the version that was refused.
                e.record.version = s.version;
                e.record.protocol_version = s.protocol_version;
                e.record.remote_addr = s.remote_addr.to_string();
            }
            e.refusal = Some(refusal);
            return;
        }
        if !self.make_room(&mut agents, &s.agent_id) {
            return;
        }
        let record = AgentRecord {
            id: s.agent_id.clone(),
            name: s.agent_name,
            group: s.group,
            version: s.version,
            protocol_version: s.protocol_version,
            host: s.host,
            proxy: s.proxy,
            state: AgentState::Disconnected,
            status: AgentStatus {
                state: Health::Refused,
                reason: String::new(),
                since: now,
            },
            uptime_secs: None,
            principal: s.principal,
            remote_addr: s.remote_addr.to_string(),
            session_id: String::new(),
            connected_since: now,
            last_seen: now,
            disconnected_at: None,
            disconnect_reason: None,
            sessions: 0,
            jobs: Vec::new(),
        };
        let entry = Entry {
            record,
            cancel: None,
            jobs: BTreeMap::new(),
            rates: HashMap::new(),
            draining: None,
            said_goodbye: false,
            had_session: false,
            refusal: Some(refusal),
        };
        agents.insert(s.agent_id, entry);
    }

    /// The agent announced a graceful stop (`draining`).
    pub fn set_draining(&self, agent_id: &str, session_id: &str, deadline_ms: u64) {
        if let Some(e) = self.lock().get_mut(agent_id)
            && e.record.session_id == session_id
        {
            e.draining = Some((SystemTime::now(), deadline_ms));
        }
    }

    /// The agent said goodbye: it stops on purpose (and may restart).
    pub fn note_goodbye(&self, agent_id: &str, session_id: &str) {
        if let Some(e) = self.lock().get_mut(agent_id)
            && e.record.session_id == session_id
        {
            e.said_goodbye = true;
        }
    }

    /// A login with these credentials was refused.
    pub fn auth_failed(&self, principal: String, remote: SocketAddr, error: &str) {
        let now = SystemTime::now();
        let mut failures = self.failures();
        if !failures.contains_key(&principal) && failures.len() >= MAX_AUTH_FAILURES {
            let oldest = failures
                .iter()
                .min_by_key(|(_, f)| f.last_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                failures.remove(&k);
            }
        }
        let f = failures
            .entry(principal.clone())
            .or_insert_with(|| AuthFailure {
                principal,
                count: 0,
                first_at: now,
                last_at: now,
                last_remote_addr: String::new(),
                last_error: String::new(),
            });
        f.count += 1;
        f.last_at = now;
        f.last_remote_addr = remote.to_string();
        f.last_error = error.to_owned();
    }

    /// A login with these credentials succeeded: its failures are over.
    pub fn auth_succeeded(&self, principal: &str) {
        self.failures().remove(principal);
    }

    /// Principals whose logins are being refused, most recent first.
    pub fn auth_failures(&self) -> Vec<AuthFailure> {
        let mut v: Vec<AuthFailure> = self.failures().values().cloned().collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.last_at));
        v
    }

    /// Ids of the connected agents of `group` that are neither draining nor
    /// silent, most recently heard first.
    pub fn connected_in_group(&self, group: &str) -> Vec<String> {
        let now = SystemTime::now();
        let failures = self.failures();
        let mut v: Vec<(SystemTime, String)> = self
            .lock()
            .values()
            .filter(|e| {
                e.record.group == group
                    && e.health(now, self.heartbeat_interval, &failures) == Health::Connected
            })
            .map(|e| (e.record.last_seen, e.record.id.clone()))
            .collect();
        v.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Agents per console state, every state listed.
    pub fn health_counts(&self, group: Option<&str>) -> BTreeMap<&'static str, usize> {
        let now = SystemTime::now();
        let failures = self.failures();
        let mut counts: BTreeMap<&'static str, usize> =
            Health::ALL.iter().map(|h| (h.as_str(), 0)).collect();
        for e in self
            .lock()
            .values()
            .filter(|e| group.is_none_or(|g| e.record.group == g))
        {
            *counts
                .entry(e.health(now, self.heartbeat_interval, &failures).as_str())
                .or_default() += 1;
        }
        counts
    }

    /// The agent sent something: it is alive.
    pub fn touch(&self, agent_id: &str, session_id: &str) {
        if let Some(e) = self.lock().get_mut(agent_id)
            && e.record.session_id == session_id
        {
            e.record.last_seen = SystemTime::now();
        }
    }

    /// A session ended. Ignored when a newer session has replaced it.
    pub fn disconnect(&self, agent_id: &str, session_id: &str, reason: &str) {
        if let Some(e) = self.lock().get_mut(agent_id)
            && e.record.session_id == session_id
            && e.record.state == AgentState::Connected
        {
            e.record.state = AgentState::Disconnected;
            e.record.disconnected_at = Some(SystemTime::now());
            e.record.disconnect_reason = Some(reason.to_owned());
            e.cancel = None;
        }
    }

    pub fn get(&self, agent_id: &str) -> Option<AgentRecord> {
        let failures = self.failures();
        self.lock()
            .get(agent_id)
            .map(|e| e.view(SystemTime::now(), self.heartbeat_interval, &failures))
    }

    /// Keep the job state an agent reported in its current session. The
    /// caller checks that the job exists and belongs to the agent's group.
    pub fn record_job_state(&self, agent_id: &str, session_id: &str, state: JobState) {
        let mut agents = self.lock();
        let Some(e) = agents
            .get_mut(agent_id)
            .filter(|e| e.record.session_id == session_id)
        else {
            return;
        };
        if !e.jobs.contains_key(&state.job_id) && e.jobs.len() >= MAX_JOB_STATES_PER_AGENT {
            let oldest = e
                .jobs
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                e.jobs.remove(&id);
            }
        }
        let now = SystemTime::now();
        let rate = Rate::next(
            e.rates.get(&state.job_id).copied(),
            state.records_relayed,
            now,
        );
        if !e.rates.contains_key(&state.job_id) && e.rates.len() >= MAX_JOB_STATES_PER_AGENT {
            e.rates.retain(|id, _| e.jobs.contains_key(id));
        }
        e.rates.insert(state.job_id.clone(), rate);
        e.jobs.insert(state.job_id.clone(), (bounded(state), now));
    }

    /// What every agent last reported about `job_id`, sorted by agent name and id.
    pub fn job_states(&self, job_id: &str) -> Vec<AgentJobState> {
        let mut v: Vec<AgentJobState> = self
            .lock()
            .values()
            .filter_map(|e| {
                e.jobs.get(job_id).map(|(state, at)| AgentJobState {
                    agent_id: e.record.id.clone(),
                    agent_name: e.record.name.clone(),
                    agent_state: e.record.state,
                    reported_at: *at,
                    records_per_sec: e.rates.get(job_id).map_or(0.0, |r| r.per_sec),
                    state: state.clone(),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.agent_name, &a.agent_id).cmp(&(&b.agent_name, &b.agent_id)));
        v
    }

    /// Drop every agent's state of a deleted job.
    pub fn forget_job(&self, job_id: &str) {
        for e in self.lock().values_mut() {
            e.jobs.remove(job_id);
            e.rates.remove(job_id);
        }
    }

    /// All agents, or those of one group, sorted by group, name and id.
    pub fn list(&self, group: Option<&str>) -> Vec<AgentRecord> {
        let now = SystemTime::now();
        let failures = self.failures();
        let mut v: Vec<AgentRecord> = self
            .lock()
            .values()
            .filter(|e| group.is_none_or(|g| e.record.group == g))
            .map(|e| e.view(now, self.heartbeat_interval, &failures))
            .collect();
        v.sort_by(|a, b| (&a.group, &a.name, &a.id).cmp(&(&b.group, &b.name, &b.id)));
        v
    }

    /// Agent counts for one group.
    pub fn counts(&self, group: &str) -> GroupCounts {
        let mut c = GroupCounts {
            states: self.health_counts(Some(group)),
            ..GroupCounts::default()
        };
        for e in self.lock().values().filter(|e| e.record.group == group) {
            c.total += 1;
            match e.record.state {
                AgentState::Connected => c.connected += 1,
                AgentState::Disconnected => c.disconnected += 1,
            }
        }
        c
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(agent: &str, session: &str) -> NewSession {
        NewSession {
            agent_id: agent.into(),
            agent_name: format!("{agent}-name"),
            group: "G".into(),
            version: "0.1.0".into(),
            protocol_version: 1,
            host: HostFacts {
                hostname: "h".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
            },
            proxy: None,
            principal: "user \"a\"".into(),
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            session_id: session.into(),
            cancel: CancellationToken::new(),
        }
    }

    #[test]
    fn reconnect_replaces_the_old_session_and_ignores_its_late_disconnect() {
        let r = Registry::new(10);
        let first = session("a1", "s1");
        let first_cancel = first.cancel.clone();
        assert!(r.connect(first).unwrap().is_none());
        let old = r
            .connect(session("a1", "s2"))
            .unwrap()
            .expect("old session handed back");
        old.cancel();
        assert!(first_cancel.is_cancelled());
        r.disconnect("a1", "s1", "replaced");
        let rec = r.get("a1").unwrap();
        assert_eq!(
            (rec.state, rec.session_id.as_str(), rec.sessions),
            (AgentState::Connected, "s2", 2)
        );
        r.disconnect("a1", "s2", "heartbeat timeout");
        let rec = r.get("a1").unwrap();
        assert_eq!(rec.state, AgentState::Disconnected);
        assert_eq!(rec.disconnect_reason.as_deref(), Some("heartbeat timeout"));
        let c = r.counts("G");
        assert_eq!((c.total, c.connected, c.disconnected), (1, 0, 1));
        assert_eq!(c.states["gone"] + c.states["reconnecting"], 1, "{c:?}");
    }

    fn state(job: &str, partitions: usize, message_len: usize) -> JobState {
        JobState {
            job_id: job.into(),
            phase: JobPhase::Failed,
            error: Some(JobError {
                class: connectivity_protocol::job::ErrorClass::Tcp,
                message: "x".repeat(message_len),
            }),
            partitions: (0..partitions as i32)
                .rev()
                .map(|p| connectivity_protocol::PartitionState {
                    partition: p,
                    ..Default::default()
                })
                .collect(),
            records_relayed: 0,
            bytes_relayed: 0,
            bytes_uncompressed: 0,
            batches_acked: 0,
        }
    }

    #[test]
    fn job_states_are_kept_per_session_bounded_and_forgotten_with_the_job() {
        let r = Registry::new(10);
        r.connect(session("a1", "s1")).unwrap();
        r.record_job_state("a1", "old-session", state("j", 1, 1));
        assert!(
            r.job_states("j").is_empty(),
            "a state from another session is ignored"
        );
        r.record_job_state(
            "a1",
            "s1",
            state("j", MAX_PARTITIONS_PER_STATE + 5, MAX_ERROR_MESSAGE + 10),
        );
        let s = &r.job_states("j")[0];
        assert_eq!(
            (s.agent_id.as_str(), s.agent_state),
            ("a1", AgentState::Connected)
        );
        assert_eq!(s.state.partitions.len(), MAX_PARTITIONS_PER_STATE);
        assert_eq!(
            s.state.partitions[0].partition, 0,
            "the lowest partitions are kept"
        );
        assert_eq!(
            s.state.error.as_ref().unwrap().message.len(),
            MAX_ERROR_MESSAGE + 3
        );
        assert_eq!(r.get("a1").unwrap().jobs[0].phase, JobPhase::Failed);
        for i in 0..MAX_JOB_STATES_PER_AGENT + 3 {
            r.record_job_state("a1", "s1", state(&format!("k{i}"), 0, 0));
        }
        assert_eq!(r.get("a1").unwrap().jobs.len(), MAX_JOB_STATES_PER_AGENT);
        r.forget_job("k300");
        r.forget_job(&format!("k{}", MAX_JOB_STATES_PER_AGENT + 2));
        assert_eq!(
            r.get("a1").unwrap().jobs.len(),
            MAX_JOB_STATES_PER_AGENT - 1
        );
        // A new session starts clean: the agent reports again.
        r.connect(session("a1", "s2")).unwrap();
        assert!(r.get("a1").unwrap().jobs.is_empty());
    }

    #[test]
    fn capacity_forgets_the_longest_silent_disconnected_agent_first() {
        let r = Registry::new(2);
        r.connect(session("a", "s")).unwrap();
        r.connect(session("b", "s")).unwrap();
        assert_eq!(r.connect(session("c", "s")).unwrap_err(), RegistryFull(2));
        r.disconnect("b", "s", "gone");
        r.connect(session("c", "s")).unwrap();
        let ids: Vec<_> = r.list(None).into_iter().map(|a| a.id).collect();
        assert_eq!(ids, vec!["a", "c"]);
        assert!(r.list(Some("other")).is_empty());
    }
}
