//! Synthetic agent drops for tests, benchmarks and the README: owns what a realistic
//! inbox looks like — every layout the parser recognises, field aliases, inherited
//! metadata, the encodings agents write in, cross-file duplicates — and a catalogue of
//! broken files ([`BadKind`]).
//!
//! Everything is deterministic from [`GenConfig::seed`]. Each fresh pair's question
//! names a timestamp derived from a counter, so fresh pairs never collide; duplicates
//! are made only on purpose (see [`GenConfig::duplicate_ratio`]). Every generated file
//! reports the exact question/answer strings it wrote, so a test can compute how many
//! distinct pairs a set of files holds without parsing them.

use crate::human::thousands;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use encoding_rs::WINDOWS_1252;
use serde_json::{Map, Value, json};

/// How a drop arranges its pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropLayout {
    /// `[{"question": ..., "answer": ..., "indicator": ..., "category": ...}, ...]`
    Flat,
    /// `{"indicator": ..., "category": ..., "batch": 4, "qa_pairs": [...]}`; pairs
    /// inherit the top-level fields.
    Nested,
    /// An array of nested objects.
    NestedArray,
    /// One pair object per line (`.jsonl`); some lines may be nested objects.
    JsonLines,
    /// A single pair object.
    Single,
}

impl DropLayout {
    /// Every layout, in declaration order.
    pub const ALL: [DropLayout; 5] = [
        DropLayout::Flat,
        DropLayout::Nested,
        DropLayout::NestedArray,
        DropLayout::JsonLines,
        DropLayout::Single,
    ];
}

/// The character encoding a drop is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropEncoding {
    /// UTF-8 without a byte-order mark.
    Utf8,
    /// UTF-8 with a byte-order mark, as Windows Notepad and PowerShell write it.
    Utf8Bom,
    /// UTF-16 little-endian with a byte-order mark.
    Utf16Le,
    /// UTF-16 big-endian with a byte-order mark.
    Utf16Be,
    /// windows-1252; text is limited to characters it can represent.
    Windows1252,
}

impl DropEncoding {
    /// Every encoding, in declaration order.
    pub const ALL: [DropEncoding; 5] = [
        DropEncoding::Utf8,
        DropEncoding::Utf8Bom,
        DropEncoding::Utf16Le,
        DropEncoding::Utf16Be,
        DropEncoding::Windows1252,
    ];

    /// Encodes `text`, with a byte-order mark where the encoding has one.
    ///
    /// # Panics
    ///
    /// For [`DropEncoding::Windows1252`], if `text` holds a character windows-1252
    /// cannot represent: encoding_rs would silently write an HTML character reference.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            DropEncoding::Utf8 => text.as_bytes().to_vec(),
            DropEncoding::Utf8Bom => [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat(),
            DropEncoding::Utf16Le => std::iter::once(0xFEFF)
                .chain(text.encode_utf16())
                .flat_map(u16::to_le_bytes)
                .collect(),
            DropEncoding::Utf16Be => std::iter::once(0xFEFF)
                .chain(text.encode_utf16())
                .flat_map(u16::to_be_bytes)
                .collect(),
            DropEncoding::Windows1252 => {
                let (bytes, _, unmappable) = WINDOWS_1252.encode(text);
                assert!(!unmappable, "text not representable in windows-1252");
                bytes.into_owned()
            }
        }
    }

    /// Windows tools of the kind that write these encodings also end lines with CRLF.
    fn crlf(self) -> bool {
        !matches!(self, DropEncoding::Utf8)
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Seed for every random choice; the same config always yields the same bytes.
    pub seed: u64,
    /// Number of well-formed files.
    pub files: usize,
    /// Pairs in each well-formed file ([`DropLayout::Single`] files hold one).
    pub pairs_per_file: usize,
    /// Fraction of the pairs in each file copied verbatim (or differing only in
    /// whitespace) from earlier files. The first file has nothing to copy from.
    pub duplicate_ratio: f64,
    /// Layouts cycled through file by file; empty means all of them.
    pub layouts: Vec<DropLayout>,
    /// Encodings cycled through file by file, offset so that every layout meets
    /// every encoding; empty means UTF-8 only.
    pub encodings: Vec<DropEncoding>,
    /// Number of broken files appended after the good ones, cycling through
    /// [`BadKind::ALL`].
    pub bad_files: usize,
    /// When set, file `i` is a nested drop named `session_<n>.json` with a top-level
    /// `"session": n`, where `n = session_start + i`.
    pub session_start: Option<u32>,
    /// Number of the first fresh pair. Fresh pairs are numbered from here, so sets
    /// generated with disjoint ranges hold disjoint pairs (scale runs use this).
    pub first_pair_id: u64,
    /// Length of each fresh answer in characters, drawn evenly from this range (both
    /// ends included), like the seeds' answers (800 to 2,000). `None`: 200 to 800, the
    /// generator's first shape, which tests rely on byte for byte.
    pub answer_chars: Option<(usize, usize)>,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 0,
            files: 10,
            pairs_per_file: 20,
            duplicate_ratio: 0.0,
            layouts: Vec::new(),
            encodings: Vec::new(),
            bad_files: 0,
            session_start: None,
            first_pair_id: 0,
            answer_chars: None,
        }
    }
}

/// One generated drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// File name, unique within one [`generate`] call unless `bad_files` exceeds the
    /// number of bad kinds.
    pub name: String,
    /// The file's content, already encoded.
    pub bytes: Vec<u8>,
    /// Number of valid pairs written (for a bad file, those a line-by-line JSON Lines
    /// reader could still recover; zero for every other bad kind).
    pub pairs: usize,
    /// `format!("{question}\n{answer}")` for each valid pair, with the exact strings
    /// written; normalise and hash them to count distinct pairs. Questions never
    /// contain a newline, so the first `\n` is the separator.
    pub distinct_keys: Vec<String>,
    /// Which kind of broken file this is, `None` for a well-formed drop.
    pub bad: Option<BadKind>,
}

/// Generates the drops `cfg` describes: `cfg.files` good files, then `cfg.bad_files`
/// broken ones.
pub fn generate(cfg: &GenConfig) -> Vec<GeneratedFile> {
    let mut generator = Generator {
        rng: fastrand::Rng::with_seed(cfg.seed),
        next_id: cfg.first_pair_id,
        answer_chars: cfg.answer_chars,
        pool: Vec::new(),
        pool_cp1252: Vec::new(),
    };
    let layouts: &[DropLayout] = if cfg.layouts.is_empty() {
        &DropLayout::ALL
    } else {
        &cfg.layouts
    };
    let encodings: &[DropEncoding] = if cfg.encodings.is_empty() {
        &[DropEncoding::Utf8]
    } else {
        &cfg.encodings
    };
    let mut out = Vec::with_capacity(cfg.files + cfg.bad_files);
    for i in 0..cfg.files {
        let layout = match cfg.session_start {
            Some(_) => DropLayout::Nested,
            None => layouts[i % layouts.len()],
        };
        let encoding = encodings[(i + i / layouts.len()) % encodings.len()];
        let session = cfg
            .session_start
            .map(|start| start + u32::try_from(i).expect("session number fits in u32"));
        out.push(generator.file(cfg, i, layout, encoding, session));
    }
    for j in 0..cfg.bad_files {
        let kind = BadKind::ALL[j % BadKind::ALL.len()];
        let (mut name, bytes) = bad_file(kind);
        if j >= BadKind::ALL.len() {
            name = name.replacen("bad_", &format!("bad_{j:04}_"), 1);
        }
        let distinct_keys = kind.recoverable_keys();
        out.push(GeneratedFile {
            name,
            bytes,
            pairs: distinct_keys.len(),
            distinct_keys,
            bad: Some(kind),
        });
    }
    out
}

/// Writes `files` into `dir` (created if missing). Each file is written under a
/// temporary name and renamed into place, so a watcher never sees half a file.
pub fn write_files(dir: &Path, files: &[GeneratedFile]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for file in files {
        // The suffix keeps the temporary name out of any `*.json` / `*.jsonl` match.
        let partial = dir.join(format!(".{}.partial", file.name));
        std::fs::write(&partial, &file.bytes)?;
        std::fs::rename(&partial, dir.join(&file.name))?;
    }
    Ok(())
}

/// A kind of broken file that the ingester must reject (or, for JSON Lines, partly
/// recover) without losing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadKind {
    /// JSON with a missing comma between two fields.
    MalformedJson,
    /// JSON cut off in the middle of a string.
    TruncatedJson,
    /// A zero-byte file.
    Empty,
    /// Only spaces, tabs and newlines.
    WhitespaceOnly,
    /// Raw NUL bytes inside otherwise ordinary JSON.
    NulBytes,
    /// Binary data (a PNG header followed by noise).
    BinaryJunk,
    /// The whole document is a number.
    TopLevelNumber,
    /// The whole document is a string.
    TopLevelString,
    /// An array of numbers.
    ArrayOfNumbers,
    /// An object with neither `qa_pairs` nor question/answer fields.
    UnrecognisedLayout,
    /// A nested drop whose `qa_pairs` is a string, not an array.
    QaPairsNotArray,
    /// Pairs that are all invalid: empty or blank questions, missing answers.
    AllPairsInvalid,
    /// `[]`.
    EmptyArray,
    /// Arrays nested [`DEEP_NESTING`] levels deep (balanced, so only a depth limit
    /// stops a recursive parser from overflowing its stack).
    DeepNesting,
    /// JSON Lines in which one line is broken; the other lines are valid pairs.
    JsonlBrokenLine,
    /// Every pair's answer is a number instead of a string.
    AnswerNotString,
}

/// How deep [`BadKind::DeepNesting`] nests.
pub const DEEP_NESTING: usize = 100_000;

impl BadKind {
    /// Every kind, in declaration order.
    pub const ALL: [BadKind; 16] = [
        BadKind::MalformedJson,
        BadKind::TruncatedJson,
        BadKind::Empty,
        BadKind::WhitespaceOnly,
        BadKind::NulBytes,
        BadKind::BinaryJunk,
        BadKind::TopLevelNumber,
        BadKind::TopLevelString,
        BadKind::ArrayOfNumbers,
        BadKind::UnrecognisedLayout,
        BadKind::QaPairsNotArray,
        BadKind::AllPairsInvalid,
        BadKind::EmptyArray,
        BadKind::DeepNesting,
        BadKind::JsonlBrokenLine,
        BadKind::AnswerNotString,
    ];

    /// A short snake_case name, used in the file name.
    pub fn slug(self) -> &'static str {
        match self {
            BadKind::MalformedJson => "malformed_missing_comma",
            BadKind::TruncatedJson => "truncated_mid_string",
            BadKind::Empty => "empty",
            BadKind::WhitespaceOnly => "whitespace_only",
            BadKind::NulBytes => "nul_bytes",
            BadKind::BinaryJunk => "binary_junk",
            BadKind::TopLevelNumber => "top_level_number",
            BadKind::TopLevelString => "top_level_string",
            BadKind::ArrayOfNumbers => "array_of_numbers",
            BadKind::UnrecognisedLayout => "unrecognised_layout",
            BadKind::QaPairsNotArray => "qa_pairs_not_array",
            BadKind::AllPairsInvalid => "all_pairs_invalid",
            BadKind::EmptyArray => "empty_array",
            BadKind::DeepNesting => "deep_nesting",
            BadKind::JsonlBrokenLine => "jsonl_broken_line",
            BadKind::AnswerNotString => "answer_not_string",
        }
    }

    /// Keys (as in [`GeneratedFile::distinct_keys`]) of the valid pairs a reader that
    /// skips broken lines would still find; empty for every kind but
    /// [`BadKind::JsonlBrokenLine`].
    pub fn recoverable_keys(self) -> Vec<String> {
        match self {
            BadKind::JsonlBrokenLine => JSONL_GOOD_LINES
                .iter()
                .map(|(q, a)| format!("{q}\n{a}"))
                .collect(),
            _ => Vec::new(),
        }
    }
}

const JSONL_GOOD_LINES: [(&str, &str); 2] = [
    (
        "What does a Parabolic SAR flip below price mean?",
        "The dots moving beneath price mark the start of a potential uptrend; the SAR \
         then trails price upward as a stop level.",
    ),
    (
        "Why do traders watch the funding rate on perpetual futures?",
        "A persistently positive funding rate shows longs paying shorts to stay in \
         position, a sign of crowded leverage that often precedes a flush.",
    ),
];

/// The name and bytes of one broken file of `kind`.
pub fn bad_file(kind: BadKind) -> (String, Vec<u8>) {
    let ext = if kind == BadKind::JsonlBrokenLine {
        "jsonl"
    } else {
        "json"
    };
    let name = format!("bad_{}.{ext}", kind.slug());
    let bytes: Vec<u8> = match kind {
        BadKind::MalformedJson => br#"[{"question": "What is RSI?" "answer": "A momentum oscillator bounded between 0 and 100."}]"#.to_vec(),
        BadKind::TruncatedJson => {
            let full = r#"[{"question": "How is MACD calculated?", "answer": "Subtract the 26-period EMA from the 12-period EMA, then plot a 9-period EMA of the result as the signal line."}]"#;
            let cut = full.find("26-period").expect("marker present");
            full.as_bytes()[..cut].to_vec()
        }
        BadKind::Empty => Vec::new(),
        BadKind::WhitespaceOnly => b"  \n\t\r\n   \n".to_vec(),
        BadKind::NulBytes => b"[{\"question\": \"What is SOPR?\", \"answer\": \"Spent \0\0\0\0 output profit ratio.\"}]".to_vec(),
        BadKind::BinaryJunk => {
            let mut rng = fastrand::Rng::with_seed(0x6a75_6e6b);
            let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
            bytes.extend((0..512).map(|_| rng.u8(..)));
            bytes
        }
        BadKind::TopLevelNumber => b"42\n".to_vec(),
        BadKind::TopLevelString => b"\"question: what is RSI? answer: a momentum oscillator\"\n".to_vec(),
        BadKind::ArrayOfNumbers => b"[1, 2, 3, 5, 8, 13]\n".to_vec(),
        BadKind::UnrecognisedLayout => br#"{"indicator": "RSI", "notes": "Momentum oscillator, 14 periods by default.", "items": [{"title": "Overbought", "body": "Above 70."}]}"#.to_vec(),
        BadKind::QaPairsNotArray => br#"{"indicator": "MVRV", "category": "on-chain", "qa_pairs": "see attached spreadsheet"}"#.to_vec(),
        BadKind::AllPairsInvalid => br#"[{"question": "", "answer": "An orphan answer."}, {"question": "A question without an answer?"}, {"question": "   ", "answer": "Blank question."}, {"question": "Empty answer?", "answer": ""}]"#.to_vec(),
        BadKind::EmptyArray => b"[]".to_vec(),
        BadKind::DeepNesting => {
            let mut bytes = vec![b'['; DEEP_NESTING];
            bytes.resize(2 * DEEP_NESTING, b']');
            bytes
        }
        BadKind::JsonlBrokenLine => {
            let line = |(q, a): (&str, &str)| json!({"question": q, "answer": a}).to_string();
            format!(
                "{}\n{{\"question\": \"Is the Fear & Greed index contrarian?\", \"answer\": \n{}\n",
                line(JSONL_GOOD_LINES[0]),
                line(JSONL_GOOD_LINES[1]),
            )
            .into_bytes()
        }
        BadKind::AnswerNotString => br#"[{"question": "What RSI level is overbought?", "answer": 70}, {"question": "What is the default RSI period?", "answer": 14}, {"question": "Is SOPR above one bullish?", "answer": true}]"#.to_vec(),
    };
    (name, bytes)
}

struct Indicator {
    name: &'static str,
    /// How prose refers to it mid-sentence, article included where English wants one.
    subject: &'static str,
    /// The subject of the defining sentence, spelled out.
    intro: &'static str,
    slug: &'static str,
    category: &'static str,
    /// Completes "<name> ..." with what the indicator measures.
    what: &'static str,
    /// What a reading is called in prose, e.g. "RSI reading".
    label: &'static str,
    low: f64,
    high: f64,
    decimals: usize,
    unit: &'static str,
    bullish: &'static str,
    bearish: &'static str,
    /// Completes "<name> ..." with its main weakness.
    pitfall: &'static str,
}

const INDICATORS: &[Indicator] = &[
    Indicator {
        name: "RSI",
        subject: "RSI",
        intro: "The Relative Strength Index (RSI)",
        slug: "rsi",
        category: "momentum",
        what: "compares the size of recent gains with recent losses on a 0–100 scale, usually over 14 periods",
        label: "RSI reading",
        low: 8.0,
        high: 92.0,
        decimals: 1,
        unit: "",
        bullish: "a recovery from below 30 while price prints a lower low is the classic bullish divergence",
        bearish: "a push above 70 that fails to confirm a new price high often marks exhaustion",
        pitfall: "can stay “overbought” for weeks when a trend is strong",
    },
    Indicator {
        name: "MACD",
        subject: "MACD",
        intro: "Moving Average Convergence Divergence (MACD)",
        slug: "macd",
        category: "momentum",
        what: "tracks the gap between the 12- and 26-period exponential moving averages and plots a 9-period signal line against it",
        label: "MACD histogram",
        low: -2.5,
        high: 2.5,
        decimals: 2,
        unit: "",
        bullish: "the MACD line crossing above its signal line below zero, with the histogram turning positive",
        bearish: "a cross below the signal line while the histogram shrinks from a high",
        pitfall: "lags price because it is built from moving averages",
    },
    Indicator {
        name: "Stochastic RSI",
        subject: "Stochastic RSI",
        intro: "Stochastic RSI",
        slug: "stoch_rsi",
        category: "momentum",
        what: "applies the stochastic formula to RSI itself, so it swings between 0 and 1 and reacts faster than plain RSI",
        label: "Stochastic RSI value",
        low: 0.0,
        high: 1.0,
        decimals: 2,
        unit: "",
        bullish: "%K crossing above %D from below 0.2",
        bearish: "%K crossing below %D from above 0.8",
        pitfall: "whipsaws constantly on low timeframes",
    },
    Indicator {
        name: "Bollinger Bands",
        subject: "Bollinger Bands",
        intro: "Bollinger Bands",
        slug: "bollinger",
        category: "volatility",
        what: "place bands two standard deviations above and below a 20-period simple moving average",
        label: "Bollinger bandwidth",
        low: 1.5,
        high: 24.0,
        decimals: 1,
        unit: "%",
        bullish: "a close back inside the lower band after a “squeeze” has released to the downside",
        bearish: "a walk along the upper band that ends with a close back under the middle band",
        pitfall: "say nothing about direction when the bands widen",
    },
    Indicator {
        name: "Keltner Channels",
        subject: "Keltner Channels",
        intro: "Keltner Channels",
        slug: "keltner",
        category: "volatility",
        what: "wrap a 20-period EMA with bands set at twice the Average True Range",
        label: "Keltner channel width",
        low: 1.0,
        high: 15.0,
        decimals: 1,
        unit: "%",
        bullish: "a close above the upper channel after Bollinger Bands have moved inside the channels",
        bearish: "a close below the lower channel on rising volume",
        pitfall: "react slowly after a volatility spike because ATR is smoothed",
    },
    Indicator {
        name: "ATR",
        subject: "ATR",
        intro: "The Average True Range (ATR)",
        slug: "atr",
        category: "volatility",
        what: "averages the true range of each bar, so it shows how far price typically moves regardless of direction",
        label: "14-period ATR",
        low: 0.4,
        high: 8.5,
        decimals: 2,
        unit: "% of price",
        bullish: "ATR contracting for several weeks before a breakout above resistance",
        bearish: "ATR expanding while price breaks a support level",
        pitfall: "is not a directional signal at all",
    },
    Indicator {
        name: "Ichimoku Tenkan-sen",
        subject: "the Tenkan-sen",
        intro: "The Ichimoku Tenkan-sen, or conversion line,",
        slug: "tenkan_sen",
        category: "trend",
        what: "is the midpoint of the highest high and lowest low of the last nine periods, the fastest line of the Ichimoku system",
        label: "distance from price to the Tenkan-sen",
        low: -6.0,
        high: 6.0,
        decimals: 2,
        unit: "%",
        bullish: "the Tenkan-sen crossing above the Kijun-sen while price holds above the cloud",
        bearish: "a Tenkan-sen cross below the Kijun-sen inside or under the cloud",
        pitfall: "flattens out in ranges and then crosses the Kijun-sen again and again",
    },
    Indicator {
        name: "Parabolic SAR",
        subject: "the Parabolic SAR",
        intro: "The Parabolic Stop and Reverse (SAR)",
        slug: "parabolic_sar",
        category: "trend",
        what: "trails price with dots that accelerate toward it as a trend extends, flipping sides when price crosses them",
        label: "SAR acceleration factor",
        low: 0.02,
        high: 0.2,
        decimals: 2,
        unit: "",
        bullish: "the dots flipping below price after a higher low",
        bearish: "the dots flipping above price after a lower high",
        pitfall: "gets stopped out over and over in sideways markets",
    },
    Indicator {
        name: "ADX",
        subject: "ADX",
        intro: "The Average Directional Index (ADX)",
        slug: "adx",
        category: "trend",
        what: "measures trend strength on a 0–100 scale without saying which way the trend points",
        label: "ADX reading",
        low: 8.0,
        high: 62.0,
        decimals: 1,
        unit: "",
        bullish: "ADX rising through 25 while +DI stays above -DI",
        bearish: "ADX rising through 25 while -DI leads +DI",
        pitfall: "peaks after the trend it measures is already mature",
    },
    Indicator {
        name: "200-day EMA",
        subject: "the 200-day EMA",
        intro: "The 200-day exponential moving average (EMA)",
        slug: "ema200",
        category: "trend",
        what: "weights recent closes more heavily than a simple average and is widely watched as the line between bull and bear regimes",
        label: "distance from the 200-day EMA",
        low: -35.0,
        high: 60.0,
        decimals: 1,
        unit: "%",
        bullish: "a weekly close back above the 200-day EMA after a long stretch below it",
        bearish: "a rejection from underneath the 200-day EMA on falling volume",
        pitfall: "turns so slowly that signals often arrive after half the move",
    },
    Indicator {
        name: "funding rate",
        subject: "the funding rate",
        intro: "The funding rate of a perpetual future",
        slug: "funding_rate",
        category: "market microstructure",
        what: "is the periodic payment between longs and shorts that keeps a perpetual contract anchored to spot",
        label: "funding rate",
        low: -0.08,
        high: 0.15,
        decimals: 3,
        unit: "% per 8 hours",
        bullish: "deeply negative funding while price refuses to fall, which sets up a short squeeze",
        bearish: "funding above 0.1% per 8 hours while price stalls, a sign of crowded longs",
        pitfall: "differs from exchange to exchange and can stay extreme for days",
    },
    Indicator {
        name: "open interest",
        subject: "open interest",
        intro: "Open interest",
        slug: "open_interest",
        category: "market microstructure",
        what: "counts the futures and perpetual contracts still open, showing how much leverage sits in the market",
        label: "24-hour change in open interest",
        low: -25.0,
        high: 40.0,
        decimals: 1,
        unit: "%",
        bullish: "open interest falling while price holds, meaning shorts are closing rather than new longs piling in",
        bearish: "open interest climbing fast into resistance with positive funding",
        pitfall: "does not say which side opened the new positions",
    },
    Indicator {
        name: "order flow imbalance",
        subject: "order flow imbalance",
        intro: "Order flow imbalance",
        slug: "order_flow",
        category: "market microstructure",
        what: "compares aggressive buy volume with aggressive sell volume at the top of the order book",
        label: "order flow imbalance",
        low: -0.9,
        high: 0.9,
        decimals: 2,
        unit: "",
        bullish: "persistent buy-side imbalance absorbed by passive sellers that eventually run out",
        bearish: "heavy market selling that keeps hitting the bid without a bounce",
        pitfall: "can be spoofed by large resting orders that vanish before execution",
    },
    Indicator {
        name: "CVD",
        subject: "CVD",
        intro: "Cumulative Volume Delta (CVD)",
        slug: "cvd",
        category: "market microstructure",
        what: "adds up the difference between market buys and market sells over time, revealing who is pushing price",
        label: "CVD change",
        low: -1800.0,
        high: 1800.0,
        decimals: 0,
        unit: " coins",
        bullish: "price making a lower low while CVD makes a higher low",
        bearish: "price grinding higher while spot CVD falls",
        pitfall: "looks very different on spot and on perpetual venues",
    },
    Indicator {
        name: "MVRV",
        subject: "MVRV",
        intro: "The Market Value to Realised Value (MVRV) ratio",
        slug: "mvrv",
        category: "on-chain",
        what: "divides market capitalisation by realised capitalisation, the value of every coin at the price it last moved",
        label: "MVRV ratio",
        low: 0.6,
        high: 4.2,
        decimals: 2,
        unit: "",
        bullish: "MVRV below 1, when the average holder is underwater",
        bearish: "MVRV above 3.5, historically near cycle tops",
        pitfall: "works on cycle timescales, not for day trading",
    },
    Indicator {
        name: "SOPR",
        subject: "SOPR",
        intro: "The Spent Output Profit Ratio (SOPR)",
        slug: "sopr",
        category: "on-chain",
        what: "divides the price at which coins are spent by the price at which they were acquired",
        label: "SOPR value",
        low: 0.9,
        high: 1.12,
        decimals: 3,
        unit: "",
        bullish: "SOPR bouncing off 1 during an uptrend, as holders refuse to sell at a loss",
        bearish: "SOPR rejected from 1 from below in a downtrend",
        pitfall: "is distorted by exchange-internal transfers",
    },
    Indicator {
        name: "whale transaction tracking",
        subject: "whale transaction tracking",
        intro: "Whale transaction tracking",
        slug: "whale_tracking",
        category: "on-chain",
        what: "counts on-chain transfers above a large threshold, typically $1 million, to follow what the biggest holders do",
        label: "count of whale transfers in 24 hours",
        low: 40.0,
        high: 900.0,
        decimals: 0,
        unit: "",
        bullish: "large withdrawals from exchanges to cold wallets",
        bearish: "a burst of large deposits to exchanges ahead of a known unlock",
        pitfall: "cannot tell a custody reshuffle from a real sale",
    },
    Indicator {
        name: "exchange netflow",
        subject: "exchange netflow",
        intro: "Exchange netflow",
        slug: "exchange_netflow",
        category: "on-chain",
        what: "is the difference between coins flowing into and out of exchange wallets",
        label: "daily exchange netflow",
        low: -25000.0,
        high: 25000.0,
        decimals: 0,
        unit: " coins",
        bullish: "sustained net outflows, which shrink the supply available to sell",
        bearish: "a spike of inflows while price is near resistance",
        pitfall: "depends on wallet labels that are often incomplete",
    },
    Indicator {
        name: "Fear & Greed Index",
        subject: "the Fear & Greed Index",
        intro: "The Crypto Fear & Greed Index",
        slug: "fear_greed",
        category: "sentiment",
        what: "blends volatility, momentum, social media, dominance and search trends into one 0–100 score",
        label: "Fear & Greed score",
        low: 5.0,
        high: 95.0,
        decimals: 0,
        unit: "",
        bullish: "readings of “extreme fear” under 20 while price holds a higher low",
        bearish: "“extreme greed” above 80 for several days in a row",
        pitfall: "is a contrarian gauge that can stay extreme longer than a trader can stay solvent",
    },
    Indicator {
        name: "long/short ratio",
        subject: "the long/short ratio",
        intro: "The long/short account ratio",
        slug: "long_short_ratio",
        category: "sentiment",
        what: "compares the number of accounts holding long positions with those holding shorts on a derivatives exchange",
        label: "long/short ratio",
        low: 0.5,
        high: 3.5,
        decimals: 2,
        unit: "",
        bullish: "a ratio well below 1 while price refuses to break down",
        bearish: "a ratio above 2.5 with retail piling into longs near resistance",
        pitfall: "counts accounts, not position size, so whales barely move it",
    },
    Indicator {
        name: "social dominance",
        subject: "social dominance",
        intro: "Social dominance",
        slug: "social_dominance",
        category: "sentiment",
        what: "measures what share of crypto social media discussion mentions a given coin",
        label: "social dominance",
        low: 2.0,
        high: 40.0,
        decimals: 1,
        unit: "%",
        bullish: "dominance fading to lows while price builds a base",
        bearish: "dominance spiking to a yearly high right after a vertical rally",
        pitfall: "is easy to inflate with bots",
    },
];

const CATEGORIES: [&str; 6] = [
    "momentum",
    "trend",
    "volatility",
    "on-chain",
    "sentiment",
    "market microstructure",
];

/// Ticker and a typical price, so quoted prices stay plausible.
const ASSETS: [(&str, f64); 10] = [
    ("BTC", 42_000.0),
    ("ETH", 2_400.0),
    ("SOL", 95.0),
    ("XRP", 0.55),
    ("ADA", 0.45),
    ("AVAX", 28.0),
    ("LINK", 14.0),
    ("DOGE", 0.09),
    ("BNB", 310.0),
    ("DOT", 6.5),
];

const TIMEFRAMES: [&str; 5] = ["15-minute", "1-hour", "4-hour", "daily", "weekly"];
const EXCHANGES: [&str; 6] = ["Binance", "Coinbase", "Kraken", "Bybit", "OKX", "Deribit"];
const REGIMES: [(&str, &str); 4] = [
    (
        "range-bound",
        "oscillators shine while trend tools keep flipping, so fade the extremes instead of chasing breakouts",
    ),
    (
        "strongly trending",
        "overbought and oversold levels lose meaning and pullbacks to a moving average matter more",
    ),
    (
        "high-volatility",
        "stops need to sit further away and position size has to shrink to keep the same risk",
    ),
    (
        "low-liquidity weekend",
        "thin books exaggerate every wick, so signals that appear on Saturday often reverse by Monday",
    ),
];
const SOURCES: [&str; 6] = [
    "Investopedia",
    "Glassnode Academy",
    "TradingView docs",
    "CryptoQuant guides",
    "Binance Research",
    "Murphy, Technical Analysis of the Financial Markets",
];

/// Days from 1970-01-01 to 2017-01-01, where pair timestamps start.
const EPOCH_DAYS_2017: i64 = 17_167;

/// Field names for one file: agents disagree on them, the parser accepts all.
struct Aliases {
    question: &'static str,
    answer: &'static str,
    indicator: &'static str,
    category: &'static str,
}

impl Aliases {
    fn pick(rng: &mut fastrand::Rng) -> Aliases {
        Aliases {
            question: ["question", "question", "q", "prompt"][rng.usize(..4)],
            answer: ["answer", "answer", "a", "response"][rng.usize(..4)],
            indicator: ["indicator", "indicator_name"][rng.usize(..2)],
            category: ["category", "indicator_category"][rng.usize(..2)],
        }
    }
}

/// A pair as written, kept so later files can copy it.
#[derive(Clone)]
struct Written {
    question: String,
    answer: String,
    indicator: usize,
}

struct Generator {
    rng: fastrand::Rng,
    /// Counter behind each fresh pair's unique timestamp.
    next_id: u64,
    /// [`GenConfig::answer_chars`].
    answer_chars: Option<(usize, usize)>,
    /// Pairs of earlier files.
    pool: Vec<Written>,
    /// Indices into `pool` of pairs windows-1252 can represent.
    pool_cp1252: Vec<usize>,
}

impl Generator {
    fn file(
        &mut self,
        cfg: &GenConfig,
        index: usize,
        layout: DropLayout,
        encoding: DropEncoding,
        session: Option<u32>,
    ) -> GeneratedFile {
        let count = if layout == DropLayout::Single {
            1
        } else {
            cfg.pairs_per_file
        };
        let main = self.rng.usize(..INDICATORS.len());
        let pairs = self.pairs(count, main, layout, encoding, cfg.duplicate_ratio);
        let aliases = Aliases::pick(&mut self.rng);
        let extras = self.rng.u8(..3) == 0;
        let text = match layout {
            DropLayout::Flat => {
                let items = pairs
                    .iter()
                    .map(|p| self.flat(p, &aliases, extras))
                    .collect();
                self.serialise(&Value::Array(items), encoding)
            }
            DropLayout::Single => {
                let item = self.flat(&pairs[0], &aliases, extras);
                self.serialise(&item, encoding)
            }
            DropLayout::Nested => {
                let batch = index + 1;
                let item = self.nested(&pairs, main, &aliases, batch, session);
                self.serialise(&item, encoding)
            }
            DropLayout::NestedArray => {
                let groups = split(&pairs, 1 + self.rng.usize(..3));
                let items = groups
                    .iter()
                    .enumerate()
                    .map(|(g, group)| {
                        let indicator = group.first().map_or(main, |p| p.indicator);
                        self.nested(group, indicator, &aliases, index * 10 + g + 1, None)
                    })
                    .collect();
                self.serialise(&Value::Array(items), encoding)
            }
            DropLayout::JsonLines => self.json_lines(&pairs, main, &aliases, encoding),
        };
        let name = match (session, layout) {
            (Some(n), _) => format!("session_{n}.json"),
            (None, DropLayout::JsonLines) => {
                format!("droid_batch_{index:04}_{}.jsonl", INDICATORS[main].slug)
            }
            (None, _) => format!("droid_batch_{index:04}_{}.json", INDICATORS[main].slug),
        };
        let distinct_keys: Vec<String> = pairs
            .iter()
            .map(|p| format!("{}\n{}", p.question, p.answer))
            .collect();
        for pair in pairs {
            if is_cp1252(&pair.question) && is_cp1252(&pair.answer) {
                self.pool_cp1252.push(self.pool.len());
            }
            self.pool.push(pair);
        }
        GeneratedFile {
            name,
            bytes: encoding.encode(&text),
            pairs: distinct_keys.len(),
            distinct_keys,
            bad: None,
        }
    }

    /// Fresh pairs about `main` (or, in flat files, other indicators too) mixed with
    /// copies from earlier files.
    fn pairs(
        &mut self,
        count: usize,
        main: usize,
        layout: DropLayout,
        encoding: DropEncoding,
        duplicate_ratio: f64,
    ) -> Vec<Written> {
        let cp1252 = encoding == DropEncoding::Windows1252;
        let candidates = if cp1252 {
            self.pool_cp1252.len()
        } else {
            self.pool.len()
        };
        // Stochastic rounding keeps the expected share exact even for tiny files.
        let wanted = duplicate_ratio.clamp(0.0, 1.0) * count as f64;
        let mut copies = wanted.floor() as usize + usize::from(self.rng.f64() < wanted.fract());
        copies = copies.min(count).min(candidates);
        let mut chosen = std::collections::HashSet::new();
        while chosen.len() < copies {
            let k = self.rng.usize(..candidates);
            chosen.insert(if cp1252 { self.pool_cp1252[k] } else { k });
        }
        // HashSet order is not deterministic; sorting restores it.
        let mut chosen: Vec<usize> = chosen.into_iter().collect();
        chosen.sort_unstable();
        let mut out = Vec::with_capacity(count);
        for i in chosen {
            let copy = self.pool[i].clone();
            out.push(self.maybe_respace(copy));
        }
        while out.len() < count {
            let indicator = if layout == DropLayout::Flat && self.rng.bool() {
                self.rng.usize(..INDICATORS.len())
            } else {
                main
            };
            out.push(self.fresh(indicator, !cp1252));
        }
        self.rng.shuffle(&mut out);
        out
    }

    /// A copy that differs only in whitespace, which normalisation must see through.
    fn maybe_respace(&mut self, mut pair: Written) -> Written {
        match self.rng.u8(..8) {
            0 => pair.question.push(' '),
            1 => pair.answer = pair.answer.replacen(". ", ".  ", 1),
            2 => pair.answer.insert(0, '\n'),
            _ => {}
        }
        pair
    }

    fn fresh(&mut self, indicator: usize, beyond_cp1252: bool) -> Written {
        let id = self.next_id;
        self.next_id += 1;
        let ind = &INDICATORS[indicator];
        let rng = &mut self.rng;
        let fancy = rng.u8(..10) < 3;
        let asset = ASSETS[rng.usize(..ASSETS.len())];
        let tf = TIMEFRAMES[rng.usize(..TIMEFRAMES.len())];
        let exchange = EXCHANGES[rng.usize(..EXCHANGES.len())];
        let regime = REGIMES[rng.usize(..REGIMES.len())];
        let other = loop {
            let o = &INDICATORS[rng.usize(..INDICATORS.len())];
            if o.name != ind.name {
                break o;
            }
        };
        let bullish = rng.bool();
        let dir = if bullish { "bullish" } else { "bearish" };
        let ts = timestamp(id);
        let value = ind.low + rng.f64() * (ind.high - ind.low);
        let v = format!("{value:.prec$}{}", ind.unit, prec = ind.decimals);
        let price = asset.1 * (0.6 + rng.f64());
        let (name, subject, label, ticker) = (ind.name, ind.subject, ind.label, asset.0);

        let question = match rng.usize(..8) {
            0 => format!(
                "How should a trader read a {label} of {v} on the {tf} {ticker} chart at the {ts} close?"
            ),
            1 => format!(
                "What did {subject} signal for {ticker} on the {tf} timeframe at {ts}, with the {label} at {v}?"
            ),
            2 => format!(
                "Is a {label} of {v} on {ticker} ({tf} chart, {ts}) a reason to go long, go short, or stay flat?"
            ),
            3 => format!(
                "Why can {subject} mislead {ticker} traders in a {} market like the one around {ts}?",
                regime.0
            ),
            4 => format!(
                "How would you combine {subject} with {} to confirm a {dir} setup on {ticker} at {ts}?",
                other.subject
            ),
            5 => format!(
                "On {exchange}, {ticker} showed a {label} of {v} at {ts}. What does that usually mean for the next few {tf} candles?"
            ),
            6 => format!(
                "Where should the stop-loss go after a {dir} {name} signal on {ticker} ({tf} chart, {ts})?"
            ),
            _ => format!(
                "What does {subject} tell you that price alone doesn’t, taking {ticker} at {ts} as the example?"
            ),
        };

        let stop = 1.0 + rng.f64() * 7.0;
        let stop_price = if bullish {
            price * (1.0 - stop / 100.0)
        } else {
            price * (1.0 + stop / 100.0)
        };
        let mut sentences = vec![
            format!(
                "At {ts} the {label} stood at {v}, which on the {tf} chart {}.",
                [
                    "is stretched enough to expect a pause",
                    "sits in neutral territory and says little on its own",
                    &format!("points to a {dir} bias if the next candle confirms it"),
                ][rng.usize(..3)]
            ),
            format!(
                "For the {dir} case, look for {}.",
                if bullish { ind.bullish } else { ind.bearish }
            ),
            format!(
                "The main caveat is that {subject} {}, so treat one reading as a hint rather than a verdict.",
                ind.pitfall
            ),
            format!(
                "Pairing it with {} helps: when both agree the signal is worth acting on, and when they disagree it’s usually better to wait.",
                other.subject
            ),
            format!(
                "{ticker} was trading near ${} at the time, so a stop {stop:.1}% away would sit around ${}.",
                money(price),
                money(stop_price)
            ),
            format!(
                "Keep the risk per trade to about {:.1}% of the account — {name} signals fail often enough that position size matters more than entry precision.",
                0.5 + rng.f64() * 1.5
            ),
            format!(
                "In a {} market the picture changes: {}.",
                regime.0, regime.1
            ),
            format!(
                "Liquidity on {exchange} matters too, because thin order books on the {tf} timeframe exaggerate the wicks that trigger false signals."
            ),
            format!(
                "Before trusting the setup, backtest it over at least {} trades and check that it survives fees of about {:.2}% per side.",
                50 * (2 + rng.usize(..20)),
                0.02 + rng.f64() * 0.08
            ),
        ];
        if fancy {
            let account = 1_000 * (2 + rng.usize(..48));
            sentences.push(format!(
                "For a €{} account that means risking roughly €{} per trade — small enough to survive a losing streak.",
                thousands(account as u64),
                thousands((account / 100) as u64)
            ));
            sentences.push(if rng.bool() {
                format!("A naïve reading of the “{label}” alone leads to déjà vu losses: the same false signal, again and again.")
            } else {
                format!("Desks in Zürich and Paris quote {subject} in their morning notes, but always next to volume.")
            });
        }
        if beyond_cp1252 && rng.u8(..20) == 0 {
            sentences.push(format!(
                "Rule of thumb: {dir} {name} signal → wait for confirmation, expect a move of ≈{:.1}σ 📈.",
                0.5 + rng.f64() * 2.0
            ));
        }
        rng.shuffle(&mut sentences);
        let mut answer = format!("{} {}.", ind.intro, ind.what);
        match self.answer_chars {
            None => {
                let target = 200 + rng.usize(..500);
                for sentence in sentences {
                    if answer.len() >= target {
                        break;
                    }
                    if answer.len() + 1 + sentence.len() <= 800 {
                        answer.push(' ');
                        answer.push_str(&sentence);
                    }
                }
            }
            Some((low, high)) => {
                let high = high.max(low);
                let target = rng.usize(low..=high);
                let chars = |s: &str| s.chars().count();
                let mut length = chars(&answer);
                let mut sentences = sentences.into_iter();
                // The pair's own sentences first, then asides on other indicators, until
                // the target is reached without passing `high`.
                let mut misses = 0;
                while length < target && misses < 8 {
                    let sentence = match sentences.next() {
                        Some(s) => s,
                        None => aside(rng, subject, ticker, tf),
                    };
                    let n = chars(&sentence);
                    if length + 1 + n <= high {
                        answer.push(' ');
                        answer.push_str(&sentence);
                        length += 1 + n;
                    } else {
                        misses += 1;
                    }
                }
                // Too short still (a narrow range): pad with a closing clause.
                while length < low {
                    answer.push_str(" Always size the position to the stop.");
                    length += 38;
                }
                if length > high {
                    let cut: usize = answer
                        .char_indices()
                        .nth(high)
                        .map_or(answer.len(), |(i, _)| i);
                    answer.truncate(cut);
                    answer = answer.trim_end().to_string();
                    // The trim may leave a narrow range one character short.
                    while answer.chars().count() < low {
                        answer.push('.');
                    }
                }
            }
        }
        if !fancy {
            return Written {
                question: plain(&question),
                answer: plain(&answer),
                indicator,
            };
        }
        Written {
            question,
            answer,
            indicator,
        }
    }

    fn flat(&mut self, pair: &Written, aliases: &Aliases, extras: bool) -> Value {
        let ind = &INDICATORS[pair.indicator];
        let mut obj = Map::new();
        obj.insert(aliases.question.into(), pair.question.clone().into());
        obj.insert(aliases.answer.into(), pair.answer.clone().into());
        obj.insert(aliases.indicator.into(), ind.name.into());
        obj.insert(aliases.category.into(), ind.category.into());
        if extras {
            self.extras(&mut obj);
        }
        Value::Object(obj)
    }

    /// Fields the parser does not know, which must survive as extra metadata.
    fn extras(&mut self, obj: &mut Map<String, Value>) {
        let rng = &mut self.rng;
        if rng.bool() {
            let level = ["beginner", "intermediate", "advanced"][rng.usize(..3)];
            obj.insert("difficulty".into(), level.into());
        }
        if rng.bool() {
            let first = rng.usize(..SOURCES.len());
            let second = (first + 1 + rng.usize(..SOURCES.len() - 1)) % SOURCES.len();
            obj.insert("sources".into(), json!([SOURCES[first], SOURCES[second]]));
        }
        if rng.bool() {
            let confidence = f64::from(60 + rng.u32(..39)) / 100.0;
            obj.insert("confidence".into(), confidence.into());
        }
    }

    fn nested(
        &mut self,
        pairs: &[Written],
        indicator: usize,
        aliases: &Aliases,
        batch: usize,
        session: Option<u32>,
    ) -> Value {
        let ind = &INDICATORS[indicator];
        let mut top = Map::new();
        top.insert("indicator".into(), ind.name.into());
        top.insert("category".into(), ind.category.into());
        top.insert("batch".into(), batch.into());
        if let Some(session) = session {
            top.insert("session".into(), session.into());
        }
        top.insert("generated_by".into(), "droid".into());
        let items = pairs
            .iter()
            .map(|pair| {
                let mut obj = Map::new();
                obj.insert(aliases.question.into(), pair.question.clone().into());
                obj.insert(aliases.answer.into(), pair.answer.clone().into());
                if self.rng.u8(..10) == 0 {
                    let other = CATEGORIES[self.rng.usize(..CATEGORIES.len())];
                    obj.insert("category".into(), other.into());
                }
                Value::Object(obj)
            })
            .collect();
        top.insert("qa_pairs".into(), Value::Array(items));
        Value::Object(top)
    }

    fn json_lines(
        &mut self,
        pairs: &[Written],
        main: usize,
        aliases: &Aliases,
        encoding: DropEncoding,
    ) -> String {
        let eol = if encoding.crlf() { "\r\n" } else { "\n" };
        let mut out = String::new();
        let mut rest = pairs;
        let mut batch = 1;
        while !rest.is_empty() {
            let line = if rest.len() >= 2 && self.rng.u8(..6) == 0 {
                let take = (2 + self.rng.usize(..2)).min(rest.len());
                let (group, tail) = rest.split_at(take);
                rest = tail;
                batch += 1;
                self.nested(group, main, aliases, batch, None)
            } else {
                let (pair, tail) = rest.split_first().expect("rest is not empty");
                rest = tail;
                self.flat(pair, aliases, false)
            };
            out.push_str(&line.to_string());
            out.push_str(eol);
        }
        out
    }

    /// Serialises in one of the styles agents use: compact, two- or four-space
    /// indentation, and Python's default of `\u` escapes for everything non-ASCII.
    fn serialise(&mut self, value: &Value, encoding: DropEncoding) -> String {
        let mut text = match self.rng.u8(..3) {
            0 => value.to_string(),
            1 => serde_json::to_string_pretty(value).expect("a Value always serialises"),
            _ => {
                let mut buf = Vec::new();
                let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
                let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
                serde::Serialize::serialize(value, &mut ser).expect("a Value always serialises");
                String::from_utf8(buf).expect("serde_json writes UTF-8")
            }
        };
        // Escaping would turn a windows-1252 or UTF-16 drop into plain ASCII and
        // defeat its purpose.
        if encoding == DropEncoding::Utf8 && self.rng.u8(..4) == 0 {
            text = ascii_escaped(&text);
        }
        if encoding.crlf() {
            // Raw newlines occur only between tokens, never inside JSON strings.
            text = text.replace('\n', "\r\n");
        }
        text.push_str(if encoding.crlf() { "\r\n" } else { "\n" });
        text
    }
}

/// Splits `pairs` into at most `groups` non-empty runs (one empty run when there are
/// no pairs, so the file still has a nested object).
fn split(pairs: &[Written], groups: usize) -> Vec<&[Written]> {
    if pairs.is_empty() {
        return vec![pairs];
    }
    let size = pairs.len().div_ceil(groups.clamp(1, pairs.len()));
    pairs.chunks(size).collect()
}

/// Replaces every non-ASCII character with `\uXXXX` escapes (surrogate pairs beyond
/// the BMP). Valid on serialised JSON because non-ASCII only occurs inside strings.
fn ascii_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                write!(out, "\\u{unit:04x}").expect("writing to a String cannot fail");
            }
        }
    }
    out
}

/// A sentence on another indicator, for answers longer than a pair's own sentences
/// make (see [`GenConfig::answer_chars`]).
fn aside(rng: &mut fastrand::Rng, subject: &str, ticker: &str, tf: &str) -> String {
    let o = &INDICATORS[rng.usize(..INDICATORS.len())];
    match rng.usize(..5) {
        0 => format!("For comparison, {} {}.", lower_first(o.intro), o.what),
        1 => format!(
            "{} {}, which is why it is rarely used alone next to {subject}.",
            upper_first(o.subject),
            o.pitfall
        ),
        2 => format!(
            "Traders who follow {} on the {tf} {ticker} chart watch for {}.",
            o.subject, o.bullish
        ),
        3 => format!(
            "The warning sign from {} is {}, and it deserves attention even when {subject} looks calm.",
            o.subject, o.bearish
        ),
        _ => format!(
            "A {} near {:.prec$}{} is worth writing down in a trading journal beside the {subject} reading, with the time and the {tf} close.",
            o.label,
            o.low + rng.f64() * (o.high - o.low),
            o.unit,
            prec = o.decimals
        ),
    }
}

/// "The RSI" mid-sentence is "the RSI"; names keep their capitals.
fn lower_first(s: &str) -> String {
    match s.strip_prefix("The ") {
        Some(rest) => format!("the {rest}"),
        None => s.to_string(),
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The typography of templates reduced to ASCII, for the majority of pairs that an
/// agent writes without curly quotes or dashes.
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '“' | '”' => '"',
            '‘' | '’' => '\'',
            '–' | '—' => '-',
            c => c,
        })
        .collect()
}

fn is_cp1252(text: &str) -> bool {
    let (_, _, unmappable) = WINDOWS_1252.encode(text);
    !unmappable
}

/// A price with two decimals below 100 (altcoins), thousands separators above.
fn money(value: f64) -> String {
    if value < 100.0 {
        format!("{value:.2}")
    } else {
        thousands(value.round() as u64)
    }
}

/// A distinct UTC minute for each pair id, 15 minutes apart from 2017-01-01 on; it is
/// what makes every fresh question unique.
fn timestamp(id: u64) -> String {
    let minutes = id * 15;
    let days = i64::try_from(minutes / 1440).expect("pair ids stay far below i64::MAX");
    let minute_of_day = minutes % 1440;
    let (y, m, d) = civil_from_days(EPOCH_DAYS_2017 + days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// How a planted near-duplicate differs from its original ([`plant_near_duplicates`]):
/// the edits that should not make two pairs different pairs for a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variation {
    /// One word of the answer replaced by another.
    WordChanged,
    /// Commas removed and the final full stop turned into an exclamation mark.
    Punctuation,
    /// The question lower-cased, the answer's first words upper-cased.
    Casing,
    /// Two sentences of the answer swapped (or, with one sentence, two clauses of the
    /// question).
    ClauseReordered,
}

impl Variation {
    /// Every variation, in the order [`plant_near_duplicates`] cycles through them.
    pub const ALL: [Variation; 4] = [
        Variation::WordChanged,
        Variation::Punctuation,
        Variation::Casing,
        Variation::ClauseReordered,
    ];

    /// A short snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Variation::WordChanged => "word_changed",
            Variation::Punctuation => "punctuation",
            Variation::Casing => "casing",
            Variation::ClauseReordered => "clause_reordered",
        }
    }
}

/// A pair as text with its indicator and category: what near-duplicates are planted
/// from, and what [`text_pairs_drop`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPair {
    /// The question.
    pub question: String,
    /// The answer.
    pub answer: String,
    /// The indicator, when it has one.
    pub indicator: Option<String>,
    /// The category, when it has one.
    pub category: Option<String>,
}

/// A planted near-duplicate of `pairs[original]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planted {
    /// Index of the original in the slice given to [`plant_near_duplicates`].
    pub original: usize,
    /// The variant (same indicator and category).
    pub variant: TextPair,
    /// How it differs.
    pub variation: Variation,
}

/// Plants a near-duplicate for `ratio` of `pairs` (chosen with `seed`, in index order),
/// cycling through the variations. Every variant differs from its original, so it is a
/// distinct pair (its key differs) that says the same thing.
pub fn plant_near_duplicates(pairs: &[TextPair], ratio: f64, seed: u64) -> Vec<Planted> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6e65_6172_5f64_7570);
    let wanted = ((ratio.clamp(0.0, 1.0) * pairs.len() as f64).round() as usize).min(pairs.len());
    let mut chosen: Vec<usize> = (0..pairs.len()).collect();
    rng.shuffle(&mut chosen);
    chosen.truncate(wanted);
    chosen.sort_unstable();
    chosen
        .into_iter()
        .enumerate()
        .map(|(i, original)| {
            let variation = Variation::ALL[i % Variation::ALL.len()];
            Planted {
                original,
                variant: vary(&pairs[original], variation, &mut rng),
                variation,
            }
        })
        .collect()
}

/// Words that replace one of the answer's words in [`Variation::WordChanged`].
const REPLACEMENTS: [&str; 6] = [
    "often",
    "typically",
    "mostly",
    "broadly",
    "largely",
    "plainly",
];

/// `pair` edited by `variation`; the result always differs from `pair`.
pub fn vary(pair: &TextPair, variation: Variation, rng: &mut fastrand::Rng) -> TextPair {
    let mut out = pair.clone();
    match variation {
        Variation::WordChanged => {
            let mut words: Vec<String> = pair.answer.split(' ').map(String::from).collect();
            let candidates: Vec<usize> = (2..words.len().saturating_sub(2))
                .filter(|&i| words[i].len() >= 4 && words[i].chars().all(char::is_alphabetic))
                .collect();
            if candidates.is_empty() {
                out.answer.push_str(" Indeed.");
            } else {
                let i = candidates[rng.usize(..candidates.len())];
                let new = loop {
                    let w = REPLACEMENTS[rng.usize(..REPLACEMENTS.len())];
                    if w != words[i] {
                        break w;
                    }
                };
                words[i] = new.to_string();
                out.answer = words.join(" ");
            }
        }
        Variation::Punctuation => {
            out.answer = pair.answer.replace(',', "");
            match out.answer.strip_suffix('.') {
                Some(stem) => out.answer = format!("{stem}!"),
                None => out.answer.push('!'),
            }
        }
        Variation::Casing => {
            out.question = pair.question.to_lowercase();
            let mut words = pair.answer.splitn(4, ' ');
            let head: Vec<String> = words.by_ref().take(3).map(str::to_uppercase).collect();
            out.answer = head.join(" ");
            if let Some(rest) = words.next() {
                out.answer.push(' ');
                out.answer.push_str(rest);
            }
            if out.question == pair.question && out.answer == pair.answer {
                out.answer.push('.');
            }
        }
        Variation::ClauseReordered => {
            let sentences: Vec<&str> = pair.answer.split_inclusive(". ").collect();
            if sentences.len() >= 3 {
                let i = 1 + rng.usize(..sentences.len() - 2);
                let mut s: Vec<String> =
                    sentences.iter().map(|x| x.trim_end().to_string()).collect();
                s.swap(i, i - 1);
                out.answer = s.join(" ");
            } else if let Some((a, b)) = pair.question.split_once(", ") {
                let b = b.trim_end_matches('?');
                out.question = format!("{b}, {}?", a.trim_end_matches('?'));
            } else {
                out.answer = format!("In short: {}", pair.answer);
            }
        }
    }
    out
}

/// A flat JSON drop of `pairs` named `name`.
pub fn text_pairs_drop(name: &str, pairs: &[TextPair]) -> GeneratedFile {
    let items: Vec<Value> = pairs
        .iter()
        .map(|p| {
            let mut o = Map::new();
            o.insert("question".into(), p.question.clone().into());
            o.insert("answer".into(), p.answer.clone().into());
            if let Some(i) = &p.indicator {
                o.insert("indicator".into(), i.clone().into());
            }
            if let Some(c) = &p.category {
                o.insert("category".into(), c.clone().into());
            }
            Value::Object(o)
        })
        .collect();
    let text = serde_json::to_string_pretty(&Value::Array(items)).expect("serialisable");
    GeneratedFile {
        name: name.to_string(),
        bytes: text.into_bytes(),
        pairs: pairs.len(),
        distinct_keys: pairs
            .iter()
            .map(|p| format!("{}\n{}", p.question, p.answer))
            .collect(),
        bad: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const QUESTION_KEYS: [&str; 3] = ["question", "q", "prompt"];
    const ANSWER_KEYS: [&str; 3] = ["answer", "a", "response"];

    fn text_of(file: &GeneratedFile) -> String {
        crate::engine::decode::decode(&file.bytes).text.into_owned()
    }

    /// A minimal reader of the layouts, independent of the real parser: every
    /// question/answer pair in `value`, in document order.
    fn pairs_in(value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| pairs_in(v, out)),
            Value::Object(obj) => {
                if let Some(inner) = obj.get("qa_pairs") {
                    return pairs_in(inner, out);
                }
                let field = |keys: &[&str]| {
                    keys.iter()
                        .find_map(|k| obj.get(*k))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                let q = field(&QUESTION_KEYS).expect("pair has a question");
                let a = field(&ANSWER_KEYS).expect("pair has an answer");
                out.push((q, a));
            }
            other => panic!("unexpected JSON value {other}"),
        }
    }

    fn parse(file: &GeneratedFile) -> Vec<(String, String)> {
        let text = text_of(file);
        let mut pairs = Vec::new();
        if file.name.ends_with(".jsonl") {
            for line in text.lines() {
                let value: Value = serde_json::from_str(line).expect("each line is JSON");
                pairs_in(&value, &mut pairs);
            }
        } else {
            let value: Value = serde_json::from_str(&text).expect("file is JSON");
            pairs_in(&value, &mut pairs);
        }
        pairs
    }

    #[test]
    fn answers_are_as_long_as_asked() {
        for (low, high) in [(800, 2000), (1000, 1000), (5, 40)] {
            let files = generate(&GenConfig {
                seed: 3,
                files: 20,
                pairs_per_file: 10,
                layouts: DropLayout::ALL.to_vec(),
                encodings: DropEncoding::ALL.to_vec(),
                answer_chars: Some((low, high)),
                ..GenConfig::default()
            });
            let mut lengths = Vec::new();
            for f in &files {
                for (_, answer) in parse(f) {
                    lengths.push(answer.chars().count());
                }
            }
            assert!(lengths.len() > 100, "{} answers", lengths.len());
            for n in &lengths {
                assert!(
                    (low..=high).contains(n),
                    "{n} characters, asked {low}-{high}"
                );
            }
            if high - low >= 500 {
                // Spread over the range, not bunched at one end (a narrow range below
                // the opening sentence's length is all cut to its top).
                let mid = (low + high) / 2;
                assert!(lengths.iter().any(|&n| n < mid) && lengths.iter().any(|&n| n > mid));
            }
        }
    }

    fn normalised(key: &str) -> String {
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let (q, a) = key.split_once('\n').expect("key has a separator");
        format!("{}\n{}", words(q), words(a))
    }

    fn distinct(files: &[GeneratedFile]) -> (usize, usize) {
        let all: Vec<String> = files
            .iter()
            .flat_map(|f| f.distinct_keys.iter().map(|k| normalised(k)))
            .collect();
        let total = all.len();
        (total, all.into_iter().collect::<HashSet<_>>().len())
    }

    fn every_combination() -> GenConfig {
        GenConfig {
            seed: 7,
            files: 25,
            pairs_per_file: 12,
            duplicate_ratio: 0.25,
            encodings: DropEncoding::ALL.to_vec(),
            ..GenConfig::default()
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let cfg = every_combination();
        assert_eq!(generate(&cfg), generate(&cfg));
        let other = GenConfig {
            seed: 8,
            ..cfg.clone()
        };
        assert_ne!(generate(&cfg), generate(&other));
    }

    #[test]
    fn every_layout_and_encoding_parses_back_to_its_keys() {
        let files = generate(&every_combination());
        let mut seen = HashSet::new();
        for (i, file) in files.iter().enumerate() {
            let layout = DropLayout::ALL[i % 5];
            let encoding = DropEncoding::ALL[(i + i / 5) % 5];
            seen.insert((layout, encoding));
            let keys: Vec<String> = parse(file)
                .into_iter()
                .map(|(q, a)| format!("{q}\n{a}"))
                .collect();
            assert_eq!(keys, file.distinct_keys, "file {}", file.name);
            assert_eq!(file.pairs, keys.len(), "file {}", file.name);
            let want = if layout == DropLayout::Single { 1 } else { 12 };
            assert_eq!(file.pairs, want, "file {}", file.name);
            assert_eq!(
                file.name.ends_with(".jsonl"),
                layout == DropLayout::JsonLines
            );
        }
        assert_eq!(seen.len(), 25, "every layout meets every encoding");
    }

    #[test]
    fn encodings_write_their_marks() {
        let cases = [
            ("utf8", DropEncoding::Utf8, "UTF-8", false),
            ("utf8_bom", DropEncoding::Utf8Bom, "UTF-8", true),
            ("utf16le", DropEncoding::Utf16Le, "UTF-16LE", true),
            ("utf16be", DropEncoding::Utf16Be, "UTF-16BE", true),
            (
                "windows1252",
                DropEncoding::Windows1252,
                "windows-1252",
                false,
            ),
        ];
        for (name, encoding, label, bom) in cases {
            let text = "{\"q\": \"Café “RSI” — 5 €\"}";
            let bytes = encoding.encode(text);
            let decoded = crate::engine::decode::decode(&bytes);
            assert_eq!(decoded.text, text, "case {name}");
            assert_eq!(decoded.encoding, label, "case {name}");
            assert_eq!(decoded.bom, bom, "case {name}");
        }
    }

    #[test]
    fn windows1252_files_round_trip() {
        let cfg = GenConfig {
            seed: 3,
            files: 30,
            pairs_per_file: 15,
            duplicate_ratio: 0.3,
            encodings: vec![DropEncoding::Windows1252],
            ..GenConfig::default()
        };
        let mut legacy_bytes = 0;
        for file in generate(&cfg) {
            let (text, had_errors) = WINDOWS_1252.decode_without_bom_handling(&file.bytes);
            assert!(!had_errors);
            let decoded = crate::engine::decode::decode(&file.bytes);
            assert_eq!(decoded.text, text, "file {}", file.name);
            if !file.bytes.is_ascii() {
                legacy_bytes += 1;
                assert_eq!(decoded.encoding, "windows-1252", "file {}", file.name);
            }
            assert_eq!(parse(&file).len(), file.pairs);
        }
        assert!(legacy_bytes > 10, "most files carry non-ASCII text");
    }

    #[test]
    fn duplicate_ratio_copies_pairs_across_files() {
        let unique = GenConfig {
            seed: 11,
            files: 20,
            pairs_per_file: 20,
            layouts: vec![
                DropLayout::Flat,
                DropLayout::Nested,
                DropLayout::NestedArray,
                DropLayout::JsonLines,
            ],
            ..GenConfig::default()
        };
        let (total, distinct_count) = distinct(&generate(&unique));
        assert_eq!((total, distinct_count), (400, 400));

        let dup = GenConfig {
            duplicate_ratio: 0.25,
            ..unique
        };
        let files = generate(&dup);
        let (total, distinct_count) = distinct(&files);
        assert_eq!(total, 400);
        // The first file has nothing to copy; the other 19 copy 5 pairs each.
        assert_eq!(total - distinct_count, 19 * 5);
        let first: HashSet<&String> = files[0].distinct_keys.iter().collect();
        assert_eq!(first.len(), 20, "no copies within the first file");
    }

    #[test]
    fn fresh_pairs_look_like_prose() {
        let files = generate(&GenConfig {
            files: 20,
            pairs_per_file: 50,
            ..GenConfig::default()
        });
        let mut non_ascii = 0;
        let mut total = 0;
        for (q, a) in files.iter().flat_map(parse) {
            total += 1;
            assert!((40..300).contains(&q.len()), "question {q:?}");
            assert!(
                (200..=800).contains(&a.len()),
                "answer of {} bytes: {a:?}",
                a.len()
            );
            non_ascii += usize::from(!q.is_ascii() || !a.is_ascii());
        }
        assert!(
            non_ascii * 5 > total && non_ascii * 2 < total,
            "{non_ascii} of {total}"
        );
    }

    #[test]
    fn session_files_are_nested_and_numbered() {
        let files = generate(&GenConfig {
            files: 3,
            pairs_per_file: 4,
            session_start: Some(101),
            layouts: vec![DropLayout::Flat],
            ..GenConfig::default()
        });
        for (file, n) in files.iter().zip(101..) {
            assert_eq!(file.name, format!("session_{n}.json"));
            let value: Value = serde_json::from_str(&text_of(file)).unwrap();
            assert_eq!(value["session"], n);
            assert_eq!(value["qa_pairs"].as_array().unwrap().len(), 4);
        }
    }

    #[test]
    fn bad_files_are_appended_and_named_uniquely() {
        let files = generate(&GenConfig {
            files: 2,
            bad_files: BadKind::ALL.len() + 2,
            ..GenConfig::default()
        });
        assert_eq!(files.len(), 2 + BadKind::ALL.len() + 2);
        let names: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names.len(), files.len());
        for (file, kind) in files[2..].iter().zip(BadKind::ALL.iter().cycle()) {
            assert_eq!(file.bad, Some(*kind));
            assert_eq!(file.pairs, kind.recoverable_keys().len());
        }
    }

    #[test]
    fn bad_kinds_hold_what_they_claim() {
        let json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes);
        for kind in BadKind::ALL {
            let (name, bytes) = bad_file(kind);
            assert!(name.contains(kind.slug()), "{kind:?}");
            let ok = match kind {
                BadKind::MalformedJson => json(&bytes).is_err_and(|e| e.is_syntax()),
                BadKind::TruncatedJson => json(&bytes).is_err_and(|e| e.is_eof()),
                BadKind::Empty => bytes.is_empty(),
                BadKind::WhitespaceOnly => {
                    !bytes.is_empty() && bytes.iter().all(u8::is_ascii_whitespace)
                }
                BadKind::NulBytes => bytes.contains(&0) && json(&bytes).is_err(),
                BadKind::BinaryJunk => std::str::from_utf8(&bytes).is_err(),
                BadKind::TopLevelNumber => json(&bytes).is_ok_and(|v| v.is_number()),
                BadKind::TopLevelString => json(&bytes).is_ok_and(|v| v.is_string()),
                BadKind::ArrayOfNumbers => json(&bytes)
                    .is_ok_and(|v| v.as_array().is_some_and(|a| a.iter().all(Value::is_number))),
                BadKind::UnrecognisedLayout => json(&bytes).is_ok_and(|v| {
                    v.as_object().is_some_and(|o| {
                        [
                            "qa_pairs", "question", "q", "prompt", "answer", "a", "response",
                        ]
                        .iter()
                        .all(|k| !o.contains_key(*k))
                    })
                }),
                BadKind::QaPairsNotArray => {
                    json(&bytes).is_ok_and(|v| v.get("qa_pairs").is_some_and(|p| !p.is_array()))
                }
                BadKind::AllPairsInvalid => json(&bytes).is_ok_and(|v| {
                    v.as_array().is_some_and(|a| {
                        a.iter().all(|p| {
                            let text = |k| p.get(k).and_then(Value::as_str).unwrap_or("");
                            text("question").trim().is_empty() || text("answer").trim().is_empty()
                        })
                    })
                }),
                BadKind::EmptyArray => json(&bytes).is_ok_and(|v| v == json!([])),
                BadKind::DeepNesting => {
                    bytes.len() == 2 * DEEP_NESTING
                        && bytes[..DEEP_NESTING].iter().all(|&b| b == b'[')
                        && bytes[DEEP_NESTING..].iter().all(|&b| b == b']')
                }
                BadKind::JsonlBrokenLine => {
                    let text = std::str::from_utf8(&bytes).unwrap();
                    let lines: Vec<&str> = text.lines().collect();
                    let broken = lines.iter().filter(|l| json(l.as_bytes()).is_err()).count();
                    let mut recovered = Vec::new();
                    for line in &lines {
                        if let Ok(v) = json(line.as_bytes()) {
                            pairs_in(&v, &mut recovered);
                        }
                    }
                    let keys: Vec<String> =
                        recovered.iter().map(|(q, a)| format!("{q}\n{a}")).collect();
                    broken == 1 && keys == kind.recoverable_keys()
                }
                BadKind::AnswerNotString => json(&bytes).is_ok_and(|v| {
                    v.as_array().is_some_and(|a| {
                        !a.is_empty()
                            && a.iter()
                                .all(|p| p.get("answer").is_some_and(|x| !x.is_string()))
                    })
                }),
            };
            assert!(ok, "{kind:?} does not hold what it claims");
        }
    }

    #[test]
    fn write_files_writes_every_file() {
        let dir = std::env::temp_dir().join(format!("perpetual-generate-{}", std::process::id()));
        let files = generate(&GenConfig {
            files: 3,
            bad_files: 2,
            ..GenConfig::default()
        });
        write_files(&dir, &files).unwrap();
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        names.sort();
        assert_eq!(on_disk, names);
        for file in &files {
            assert_eq!(std::fs::read(dir.join(&file.name)).unwrap(), file.bytes);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn timestamps_are_distinct_and_valid() {
        assert_eq!(timestamp(0), "2017-01-01 00:00 UTC");
        assert_eq!(timestamp(96), "2017-01-02 00:00 UTC");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let stamps: HashSet<String> = (0..5_000).map(timestamp).collect();
        assert_eq!(stamps.len(), 5_000);
    }
}
