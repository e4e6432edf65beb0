//! `perpetual status`: the faucet view.

use super::Exit;
use super::output::{bar, print_json, thousands};
use crate::budget::Usage;
use crate::human::progress_text;
use crate::root::Root;
use crate::run::status::{Faucet, faucet};
use anyhow::Result;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Redraw every 2 seconds until Ctrl-C (in place on a terminal; otherwise each
    /// view is printed after the last, under a line with its time).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    if args.json {
        print_json(&faucet(&conn, root, &config)?)?;
        return Ok(Exit::Ok);
    }
    if !args.watch {
        print(&faucet(&conn, root, &config)?);
        return Ok(Exit::Ok);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let terminal = std::io::stdout().is_terminal();
    while !stop.load(Ordering::SeqCst) {
        let view = faucet(&conn, root, &config)?;
        if terminal {
            print!("\x1b[2J\x1b[H");
        } else {
            println!("--- {}", crate::clock::now_rfc3339());
        }
        print(&view);
        std::io::stdout().flush()?;
        for _ in 0..20 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(Exit::Ok)
}

fn usage_line(u: &Usage) -> String {
    format!(
        "{:<16} {} {}",
        u.kind.label(),
        bar(u.percent / 100.0, 20),
        u.amount()
    )
}

fn print(f: &Faucet) {
    println!("perpetual status at {}", f.at);
    let l = &f.loop_;
    match (l.running, l.pid) {
        (true, Some(pid)) => println!(
            "loop      running (pid {pid}, since {}, heartbeat {}, {} rounds, {} idle)",
            l.since.as_deref().unwrap_or("-"),
            l.heartbeat_at.as_deref().unwrap_or("-"),
            thousands(l.rounds),
            thousands(l.idle_rounds)
        ),
        (false, Some(pid)) => println!(
            "loop      not running (last: pid {pid}, since {}, {} at {})",
            l.since.as_deref().unwrap_or("-"),
            if l.stopped_at.is_some() {
                "stopped"
            } else {
                "last heartbeat"
            },
            l.stopped_at
                .as_deref()
                .or(l.heartbeat_at.as_deref())
                .unwrap_or("-")
        ),
        _ => println!("loop      not running (`perpetual run` starts it)"),
    }
    for s in &l.sessions {
        let worst = s
            .budget
            .iter()
            .max_by(|a, b| a.percent.total_cmp(&b.percent));
        println!(
            "  {:<12} {} on {}, pid {}{}{}  {}",
            s.agent,
            s.session,
            s.task.as_deref().unwrap_or("-"),
            s.pid.map_or("-".to_string(), |p| p.to_string()),
            if s.alive { "" } else { " (gone)" },
            if s.adopted { " (adopted)" } else { "" },
            worst.map_or("no budget".to_string(), usage_line)
        );
    }
    if let Some(d) = &l.disk_low {
        println!("DISK LOW  {d}");
    }
    for a in &f.agents {
        println!();
        let state = match (&a.paused, a.sessions.len(), a.command) {
            (Some(_), _, _) => "PAUSED".to_string(),
            (None, 0, true) => "idle".to_string(),
            (None, 0, false) => "idle (no command: its own tasks wait for a person)".to_string(),
            (None, n, _) => format!("{n} session(s) running"),
        };
        println!("{}  {state}", a.agent);
        for s in &a.sessions {
            println!(
                "  session   {} on {} since {}, {} tokens",
                s.id,
                s.task.as_deref().unwrap_or("-"),
                s.started_at,
                thousands(s.tokens_used)
            );
        }
        if let Some(t) = &a.task {
            println!(
                "  task      {} ({}, {}): {}",
                t.id,
                t.kind.as_str(),
                t.state.as_str(),
                progress_text(t.done, t.total)
            );
        }
        for (i, u) in a.budget.iter().enumerate() {
            println!(
                "  {}{}",
                if i == 0 { "budget    " } else { "          " },
                usage_line(u)
            );
        }
        if let Some(u) = &a.binding {
            println!("  level     {}: {}", a.level.as_str(), u.headline());
        }
        if let Some(o) = &a.over_budget {
            println!(
                "  refused   new sessions: {} at {:.1}%{}",
                o.usage.kind.label(),
                o.usage.percent,
                o.resets_at
                    .as_deref()
                    .map(|r| format!(" (resets at {r})"))
                    .unwrap_or_default()
            );
        }
        println!(
            "  queue     {} ready ({}), {} waiting, {} blocked",
            a.queue_depth,
            if a.queue_healthy { "healthy" } else { "LOW" },
            a.waiting,
            a.blocked
        );
        if a.duties_ready > 0 || a.next_duty_due.is_some() {
            println!(
                "  duties    {} ready{}",
                a.duties_ready,
                a.next_duty_due
                    .as_deref()
                    .map(|n| format!(", next due {n}"))
                    .unwrap_or_default()
            );
        }
        println!(
            "  activity  last {}{}",
            a.last_activity.as_deref().unwrap_or("never"),
            match a.idle_seconds {
                Some(0) | None => String::new(),
                Some(s) => format!(", idle {}", crate::clock::human_duration(s)),
            }
        );
        if let Some(p) = &a.paused {
            println!(
                "  PAUSED    since {}: {} (`perpetual agent resume {}`)",
                p.at, p.reason, a.agent
            );
        }
        for r in &a.needs_review {
            println!("  REVIEW    {}: {}", r.task, r.reason);
        }
    }
    let p = &f.pipeline;
    println!();
    println!("pipeline");
    println!(
        "  pairs     {} / {} ({:.1}%) {}",
        thousands(p.pairs),
        thousands(p.goal),
        p.goal_percent,
        bar(p.goal_percent / 100.0, 20)
    );
    println!(
        "  rate      {:.1} pairs/hour over the last 24 hours ({} pairs)",
        p.pairs_per_hour,
        thousands(p.pairs_last_24h)
    );
    let by: Vec<String> = p
        .files_waiting_by_agent
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    println!(
        "  waiting   {} file(s) in the inboxes{}",
        p.files_waiting,
        if by.is_empty() {
            String::new()
        } else {
            format!(" ({})", by.join(", "))
        }
    );
    if p.bottlenecks.is_empty() {
        println!("  bottlenecks none");
    } else {
        println!("  bottlenecks");
        for b in &p.bottlenecks {
            println!(
                "    {} ({}) needs {} ({}, {})",
                b.task,
                b.agent,
                b.needs,
                b.needs_agent,
                b.needs_state.as_str()
            );
        }
    }
    println!();
    println!("today ({} so far)", f.today.date);
    for line in super::report::summary_lines(&f.today) {
        println!("  {line}");
    }
    if !f.assigner.is_empty() {
        println!();
        println!("assigner (latest first)");
        for e in &f.assigner {
            println!("  {}  {:<11} {}", e.at, e.action, e.detail);
        }
    }
}
