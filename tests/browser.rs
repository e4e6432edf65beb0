//! The faucet in a real browser: Chromium (Debian's `chromium`), driven headless through
//! the DevTools protocol, loads `/`, follows the live feed, sees a drop integrated while
//! the page is open, and the DOM is checked after the page's script ran. Screenshots at
//! 1280×800 and 390×844 (a phone) are saved under `target/tmp/` for people to look at.
//!
//! Without Chromium the test says so and passes, unless `PERPETUAL_BROWSER_TEST=required`
//! (as `.ci/run` sets it), where a missing browser fails it.

mod common;
#[path = "common/faucet.rs"]
mod faucet;

use common::{Env, PATIENCE};
use faucet::{EVIL_NAME, Faucet, NOW, history, root_with_data};
use headless_chrome::protocol::cdp::{Emulation, Page};
use headless_chrome::{Browser, LaunchOptions, Tab};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The browser: `PERPETUAL_CHROMIUM`, else the first of Debian's names on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PERPETUAL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name))
        })
        .find(|p| p.is_file())
}

/// What the page's script produced: evaluated in the page, as JSON.
fn eval(tab: &Tab, js: &str) -> serde_json::Value {
    tab.evaluate(js, false)
        .unwrap_or_else(|e| panic!("evaluating {js}: {e}"))
        .value
        .unwrap_or(serde_json::Value::Null)
}

fn wait_for(tab: &Tab, what: &str, js: &str) {
    let deadline = Instant::now() + PATIENCE;
    while eval(tab, js) != serde_json::Value::Bool(true) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} ({js}); the page now:\n{}",
            tab.get_content().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PNG of the viewport at `width`×`height` CSS pixels (`mobile`: a phone's viewport);
/// with `full`, the whole page at that width.
fn screenshot(tab: &Tab, width: u32, height: u32, mobile: bool, full: bool, to: &Path) {
    let metrics = |height: u32| Emulation::SetDeviceMetricsOverride {
        width,
        height,
        device_scale_factor: 1.0,
        mobile,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    };
    tab.call_method(metrics(height)).unwrap();
    if full {
        let h = eval(tab, "document.documentElement.scrollHeight")
            .as_u64()
            .unwrap() as u32;
        tab.call_method(metrics(h.max(height))).unwrap();
    }
    // Let the layout settle at the new size.
    std::thread::sleep(Duration::from_millis(300));
    let png = tab
        .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    std::fs::write(to, png).unwrap();
    eprintln!("screenshot: {}", to.display());
}

#[test]
fn the_faucet_updates_live_in_a_real_browser_and_screenshots_are_saved() {
    let required = std::env::var("PERPETUAL_BROWSER_TEST").is_ok_and(|v| v == "required");
    let Some(browser_path) = chromium() else {
        assert!(
            !required,
            "PERPETUAL_BROWSER_TEST=required, but no Chromium on the PATH (apt-get install chromium)"
        );
        eprintln!(
            "NOTICE: browser test skipped: no chromium on the PATH (apt-get install chromium)"
        );
        return;
    };

    let env = Env::new();
    history(&env);
    root_with_data(&env);
    let f = Faucet::start(&env, &[]);

    let profile = tempfile::tempdir().unwrap();
    let flags: Vec<&OsStr> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let browser = Browser::new(
        LaunchOptions::default_builder()
            .path(Some(browser_path))
            .headless(true)
            .sandbox(false)
            .user_data_dir(Some(profile.path().to_path_buf()))
            .window_size(Some((1280, 800)))
            .args(flags)
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    )
    .expect("start Chromium");
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(PATIENCE);
    tab.navigate_to(&format!("{}/", f.base))
        .unwrap()
        .wait_until_navigated()
        .unwrap();

    // The script connected to the live feed and applied its first event.
    wait_for(
        &tab,
        "the live feed",
        "document.getElementById('live').dataset.state === 'live' && !!document.body.dataset.version",
    );
    let version = eval(&tab, "Number(document.body.dataset.version)")
        .as_f64()
        .unwrap();
    let pairs = eval(&tab, "document.getElementById('pairs').textContent").to_string();

    // A drop integrated while the page is open appears without a reload.
    env.drop_file(
        "droid",
        "browser_live_drop.json",
        r#"[{"question": "Does the page update by itself?", "answer": "Yes, through Server-Sent Events."}]"#,
    );
    env.run_at(NOW, &["ingest"]).expect(0);
    wait_for(
        &tab,
        "the drop on the page",
        "document.getElementById('files').textContent.includes('browser_live_drop.json')",
    );
    assert!(
        eval(&tab, "Number(document.body.dataset.version)")
            .as_f64()
            .unwrap()
            > version
    );
    // The count is its own section: under load it may land an event after the list.
    wait_for(
        &tab,
        "the pair count to move",
        &format!("document.getElementById('pairs').textContent !== {pairs}"),
    );
    assert_eq!(
        eval(&tab, "performance.getEntriesByType('navigation').length"),
        serde_json::json!(1),
        "no reload"
    );
    // The agents' cards: a label for every level besides its colour.
    assert_eq!(
        eval(
            &tab,
            "document.querySelectorAll('#agents article.card').length"
        ),
        serde_json::json!(3)
    );
    assert_eq!(
        eval(
            &tab,
            "[...document.querySelectorAll('#agents .level')].every(e => e.textContent.trim().length > 0)"
        ),
        serde_json::json!(true)
    );
    assert!(
        eval(&tab, "document.getElementById('agents').textContent")
            .to_string()
            .contains("paused")
    );
    // The name that tries to be markup is text: the page has one script, its own.
    assert_eq!(eval(&tab, "document.scripts.length"), serde_json::json!(1));
    assert_eq!(
        eval(
            &tab,
            &format!(
                "[...document.querySelectorAll('#files td.name')].some(td => td.textContent.startsWith({}))",
                serde_json::json!(EVIL_NAME)
            )
        ),
        serde_json::json!(true),
        "{}",
        tab.get_content().unwrap_or_default()
    );

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    screenshot(
        &tab,
        1280,
        800,
        false,
        false,
        &out.join("faucet-1280x800.png"),
    );
    screenshot(
        &tab,
        1280,
        800,
        false,
        true,
        &out.join("faucet-1280-full.png"),
    );
    screenshot(&tab, 390, 844, true, false, &out.join("faucet-390x844.png"));
    screenshot(&tab, 390, 844, true, true, &out.join("faucet-390-full.png"));
    // Nothing wider than a phone's screen, but the tables, which scroll in their box.
    assert_eq!(
        eval(
            &tab,
            "document.documentElement.scrollWidth <= window.innerWidth"
        ),
        serde_json::json!(true),
        "the page scrolls sideways at 390 px"
    );
}
