//! The loop: `perpetual run` (`runloop`) and what it needs to keep agents working
//! unattended: one session's command under supervision (`supervise`), the process table
//! it is supervised with (`procs`), the brief (`prompt`), Claude Code's transcripts
//! (`transcript`) and hooks (`hooks`), the operator's notifications (`notify`) and view
//! of it all (`status`, and `report`: the daily report and the loop's uptime). It sits
//! on top of `work` and `engine`.

pub mod hooks;
pub mod notify;
pub mod procs;
pub mod prompt;
pub mod report;
pub mod runloop;
pub mod status;
pub mod supervise;
pub mod transcript;
