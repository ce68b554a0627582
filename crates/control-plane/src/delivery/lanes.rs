//! A batch sent as lanes, one per partition, by the sinks that take a batch
//! in several requests (webhook, kafka): up to `max_parallel` lanes at
//! once, each lane's requests one after the other, so that a partition's
//! records keep their order. A retry of the batch skips the requests
//! already accepted.

use super::sink::SinkError;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::HashSet;
use std::future::Future;

/// What one request carries: partition, first and last offset.
pub type Part = (i32, i64, i64);

/// The requests of a batch already accepted, by the records each carried:
/// a retry of the batch skips them.
pub type Accepted = HashSet<Part>;

/// What a lane got through: the requests accepted, and the error that
/// stopped it, if any.
pub type LaneOutcome = (Vec<Part>, Option<SinkError>);

/// Run `send` on every lane, at most `max_parallel` at once (bounded: a
/// lane has one request in flight).
pub async fn run<L, Fut>(
    lanes: impl IntoIterator<Item = L>,
    max_parallel: usize,
    send: impl Fn(L) -> Fut,
) -> Vec<LaneOutcome>
where
    Fut: Future<Output = LaneOutcome>,
{
    let mut lanes = lanes.into_iter();
    let mut running = FuturesUnordered::new();
    let mut outcomes = Vec::new();
    loop {
        while running.len() < max_parallel.max(1) {
            let Some(lane) = lanes.next() else { break };
            running.push(send(lane));
        }
        match running.next().await {
            Some(outcome) => outcomes.push(outcome),
            None => return outcomes,
        }
    }
}

/// Note every request accepted, also when another lane failed; `Ok` when
/// no lane failed, else the first error.
pub fn settle(outcomes: Vec<LaneOutcome>, accepted: &mut Accepted) -> Result<(), SinkError> {
    let mut first_error = None;
    for (done, err) in outcomes {
        accepted.extend(done);
        first_error = first_error.or(err);
    }
    first_error.map_or(Ok(()), Err)
}
