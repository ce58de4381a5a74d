//! How the processes of a multi-process run find each other: torchrun's environment (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), so that the same command runs
//! under `infinity-train --gpus N`, under torchrun (`torchrun --no-python …`) or any launcher
//! that sets them; and the rendezvous through which rank 0 hands every other rank the bytes of
//! a communicator's id (NCCL's unique id) over TCP.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// This process's place in a multi-process run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    /// The rank's index on its machine: its GPU.
    pub local_rank: usize,
    /// Rank 0's `host:port`, where the others meet it.
    pub master: String,
}

impl Launch {
    /// The run this process belongs to, from the environment; `None` outside a multi-process
    /// run (no `WORLD_SIZE`, or 1).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Launch::from_env`], reading the variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| v.trim().parse::<usize>().map_err(|_| launch_error(format!("{name}={v} is not a count"))))
                .transpose()
        };
        let world_size = match number("WORLD_SIZE")? {
            None | Some(1) => return Ok(None),
            Some(0) => return Err(launch_error("WORLD_SIZE=0".into())),
            Some(n) => n,
        };
        let rank = number("RANK")?.ok_or_else(|| launch_error("WORLD_SIZE is set but RANK is not".into()))?;
        if rank >= world_size {
            return Err(launch_error(format!("RANK={rank} is not below WORLD_SIZE={world_size}")));
        }
        let local_rank = number("LOCAL_RANK")?.unwrap_or(rank);
        let addr = var("MASTER_ADDR").ok_or_else(|| launch_error("MASTER_ADDR is not set".into()))?;
        let port = number("MASTER_PORT")?.ok_or_else(|| launch_error("MASTER_PORT is not set".into()))?;
        Ok(Some(Launch { rank, world_size, local_rank, master: format!("{addr}:{port}") }))
    }
}

fn launch_error(msg: String) -> Error {
    Error::Setting(format!("multi-process run: {msg}"))
}

/// Bytes every rank must receive from rank 0.
pub type Token = [u8; 128];

/// Rank 0 (`token` given) listens on `master` and sends the token to each of the other
/// `world_size − 1` ranks as it connects; every other rank connects (retrying while rank 0 is
/// not up yet) and receives it. A rank missing after `timeout` is named.
pub fn rendezvous(
    master: &str,
    rank: usize,
    world_size: usize,
    token: Option<&Token>,
    timeout: Duration,
) -> Result<Token> {
    match token {
        Some(token) => serve(master, world_size, token, timeout).map(|()| *token),
        None => fetch(master, rank, world_size, timeout),
    }
}

/// A connecting rank sends its rank and the world size it was started with (u32 LE each).
fn serve(master: &str, world_size: usize, token: &Token, timeout: Duration) -> Result<()> {
    let io = |what: &str, e: std::io::Error| launch_error(format!("rank 0 {what} {master}: {e}"));
    let listener = TcpListener::bind(master).map_err(|e| io("cannot listen on", e))?;
    listener.set_nonblocking(true).map_err(|e| io("cannot listen on", e))?;
    let deadline = Instant::now() + timeout;
    let mut joined = BTreeSet::new();
    while joined.len() + 1 < world_size {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| io("lost a connection on", e))?;
                stream.set_read_timeout(Some(timeout)).map_err(|e| io("lost a connection on", e))?;
                let mut header = [0u8; 8];
                stream.read_exact(&mut header).map_err(|e| io("read a rank's header on", e))?;
                let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
                let (rank, theirs) = (word(0) as usize, word(4) as usize);
                if theirs != world_size {
                    return Err(launch_error(format!(
                        "rank {rank} was started with WORLD_SIZE={theirs}, rank 0 with {world_size}"
                    )));
                }
                if rank == 0 || rank >= world_size || !joined.insert(rank) {
                    return Err(launch_error(format!("two processes claim rank {rank}")));
                }
                stream.write_all(token).map_err(|e| io("could not answer a rank on", e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..world_size).filter(|r| !joined.contains(r)).collect();
                    return Err(launch_error(format!(
                        "rank 0 waited {:.0} s at {master} for rank(s) {missing:?}",
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io("stopped listening on", e)),
        }
    }
    Ok(())
}

fn fetch(master: &str, rank: usize, world_size: usize, timeout: Duration) -> Result<Token> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect(master) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                let waited = timeout.as_secs_f64();
                return Err(launch_error(format!(
                    "rank {rank} could not reach rank 0 at {master} in {waited:.0} s: {e}"
                )));
            }
        }
    };
    let io = |e: std::io::Error| launch_error(format!("rank {rank} lost rank 0 at {master}: {e}"));
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let header: Vec<u8> = [rank as u32, world_size as u32].iter().flat_map(|w| w.to_le_bytes()).collect();
    stream.write_all(&header).map_err(io)?;
    let mut token = [0u8; 128];
    stream.read_exact(&mut token).map_err(io)?;
    Ok(token)
}

/// Waits for the ranks a launcher started (rank r is `ranks[r]`): `Ok` once all have
/// succeeded; as soon as one fails, the others are killed (a collective would otherwise wait
/// for the dead rank forever) and the error names it.
pub fn supervise(mut ranks: Vec<std::process::Child>) -> Result<()> {
    let mut finished = vec![false; ranks.len()];
    loop {
        for (rank, child) in ranks.iter_mut().enumerate() {
            if finished[rank] {
                continue;
            }
            let status = child.try_wait().map_err(|e| launch_error(format!("rank {rank} cannot be watched: {e}")))?;
            match status {
                Some(status) if status.success() => finished[rank] = true,
                Some(status) => {
                    for other in &mut ranks {
                        let _ = other.kill();
                        let _ = other.wait();
                    }
                    return Err(launch_error(format!("rank {rank} failed ({status}); the other ranks were stopped")));
                }
                None => {}
            }
        }
        if finished.iter().all(|&f| f) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
