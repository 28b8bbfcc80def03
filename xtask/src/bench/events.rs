//! Measure 5: decision events per second the agent records without loss. The UDP generator
//! (udp_flood.rs) offers new flows at a paced rate, step by step, each step a bounded number
//! of flows; for each step this reads what the agent wrote (its `written` counter over the
//! control socket, sampled every few milliseconds, and the `connection` and `loss` records
//! in its audit log) and the kernel's lost-event counter.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Seek as _, SeekFrom},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{agent_proc::BenchAgent, env::Env};

/// How often the agent's `written` counter is sampled.
const SAMPLE: Duration = Duration::from_millis(5);
/// The agent is done with a step when `written` has not moved for this long.
const QUIET: Duration = Duration::from_millis(700);
/// Bound on waiting for the agent to finish writing one step.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// The agent reports kernel losses and flushes its log once a second.
const LOSS_REPORT: Duration = Duration::from_millis(1300);

/// One step of the sweep.
#[derive(Clone, Debug)]
pub struct Step {
    /// Flows/s asked of the generator (0: unpaced).
    pub target: f64,
    pub flows: u64,
    pub send_secs: f64,
    /// Connection records the agent counted as written (control socket).
    pub written: u64,
    /// From the first to the last change of `written`.
    pub write_secs: f64,
    /// `connection` records that appeared in the audit log during the step.
    pub records: u64,
    /// Sum of `lost` over the `loss` records that appeared during the step.
    pub loss_records_lost: u64,
    /// Growth of the kernel's lost-event counter (control socket).
    pub kernel_lost: u64,
}

impl Step {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn offered_rate(&self) -> f64 {
        self.flows as f64 / self.send_secs
    }

    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    pub fn write_rate(&self) -> f64 {
        if self.write_secs > 0.0 {
            self.written as f64 / self.write_secs
        } else {
            0.0
        }
    }

    /// Every flow became a record and nothing was reported lost.
    pub fn lossless(&self) -> bool {
        self.kernel_lost == 0 && self.loss_records_lost == 0 && self.records >= self.flows
    }
}

/// Reads the audit log from where the last step stopped.
struct LogTail {
    offset: u64,
}

impl LogTail {
    /// (connection records, sum of `lost` of loss records) in the lines added since.
    fn read(&mut self, path: &Path) -> Result<(u64, u64)> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let (mut records, mut lost) = (0, 0);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            // A line without its newline is still being written: read it next time.
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            if line.contains("\"kind\":\"connection\"") {
                records += 1;
            } else if line.contains("\"kind\":\"loss\"") {
                let value: serde_json::Value = serde_json::from_str(&line)?;
                lost += value
                    .get("lost")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
            }
        }
        Ok((records, lost))
    }
}

/// Runs one step per entry of `rates` (flows/s; 0 = unpaced), each of `rate × step_secs`
/// flows within `[min_flows, max_flows]`.
pub fn sweep(
    env: &Env,
    agent: &BenchAgent,
    rates: &[f64],
    step_secs: f64,
    (min_flows, max_flows): (u64, u64),
) -> Result<Vec<Step>> {
    let mut tail = LogTail { offset: 0 };
    // Records from start-up (policy) are not part of any step.
    tail.read(&agent.audit_path())?;
    let mut steps = Vec::new();
    for &rate in rates {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive flow count far below 2^53"
        )]
        let flows = if rate > 0.0 {
            ((rate * step_secs) as u64).clamp(min_flows, max_flows)
        } else {
            max_flows
        };
        let step = one_step(env, agent, &mut tail, rate, flows)?;
        println!(
            "bench:   offered {:.0}/s ({} flows), written {:.0}/s ({} records), lost {}",
            step.offered_rate(),
            step.flows,
            step.write_rate(),
            step.records,
            step.kernel_lost
        );
        steps.push(step);
    }
    Ok(steps)
}

fn one_step(
    env: &Env,
    agent: &BenchAgent,
    tail: &mut LogTail,
    rate: f64,
    flows: u64,
) -> Result<Step> {
    let before = agent.events()?;
    let done = AtomicBool::new(false);
    let (sent, samples) = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            let mut quiet_since: Option<Instant> = None;
            let started = Instant::now();
            loop {
                let now = Instant::now();
                if let Ok(events) = agent.events() {
                    let moved = samples
                        .last()
                        .is_none_or(|(_, last)| *last != events.written);
                    samples.push((now, events.written));
                    quiet_since = if moved {
                        None
                    } else {
                        quiet_since.or(Some(now))
                    };
                }
                let settled = quiet_since.is_some_and(|q| now - q >= QUIET);
                if done.load(Ordering::Relaxed) && (settled || started.elapsed() > DRAIN_LIMIT) {
                    return samples;
                }
                thread::sleep(SAMPLE);
            }
        });
        let sent = env.udp_flood(rate, flows);
        done.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        (sent, samples)
    });
    let sent = sent?;
    thread::sleep(LOSS_REPORT);
    let after = agent.events()?;
    let (records, loss_records_lost) = tail.read(&agent.audit_path())?;
    Ok(Step {
        target: rate,
        flows: sent.flows,
        send_secs: sent.secs,
        written: after.written - before.written,
        write_secs: write_span(&samples, before.written, after.written),
        records,
        loss_records_lost,
        kernel_lost: after.lost - before.lost,
    })
}

/// Seconds from the last sample before `written` moved past `start` to the first sample
/// that reached `end`.
fn write_span(samples: &[(Instant, u64)], start: u64, end: u64) -> f64 {
    let first = samples.iter().rposition(|(_, w)| *w <= start).unwrap_or(0);
    let last = samples.iter().position(|(_, w)| *w >= end);
    match (samples.get(first), last.and_then(|i| samples.get(i))) {
        (Some((t0, _)), Some((t1, _))) if t1 > t0 => (*t1 - *t0).as_secs_f64(),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_span_runs_from_the_last_idle_sample_to_the_first_complete_one() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        let samples = [
            (at(0), 10),
            (at(5), 10),
            (at(10), 50),
            (at(15), 90),
            (at(20), 110),
            (at(25), 110),
        ];
        let span = write_span(&samples, 10, 110);
        assert!((span - 0.015).abs() < 1e-9, "{span}");
        assert!(write_span(&samples, 10, 500).abs() < f64::EPSILON);
    }

    #[test]
    fn a_step_is_lossless_only_when_every_flow_is_recorded() {
        let step = Step {
            target: 1.0,
            flows: 100,
            send_secs: 1.0,
            written: 100,
            write_secs: 1.0,
            records: 100,
            loss_records_lost: 0,
            kernel_lost: 0,
        };
        assert!(step.lossless());
        assert!(
            !Step {
                records: 99,
                ..step
            }
            .lossless()
        );
        assert!(
            !Step {
                kernel_lost: 1,
                ..step
            }
            .lossless()
        );
    }
}
