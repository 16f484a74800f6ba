//! The plotting helpers both experiments share: PNG and GIF files, line charts (linear or log
//! axes), bar charts, annotated heatmaps and contour plots, all drawn with the embedded
//! DejaVu Sans font (no system font library is needed).
use std::fmt::Display;
use std::path::Path;
use std::sync::Once;

use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{CliError, Result};
use crate::gif::GifWriter;

/// DejaVu Sans 2.37 from Debian's fonts-dejavu-core (license beside it in `assets/fonts`).
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
pub const FONT: &str = "sans-serif";

static FONT_INIT: Once = Once::new();

/// Registers the embedded font under the family name every chart uses.
pub fn init_fonts() {
    FONT_INIT.call_once(|| {
        // A failure shows up as a drawing error naming the file being drawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
pub type DrawResult<T = ()> = std::result::Result<T, String>;

/// Turns any displayable error into the `String` the drawing closures return.
pub trait OrStr<T> {
    fn s(self) -> DrawResult<T>;
}

impl<T, E: Display> OrStr<T> for std::result::Result<T, E> {
    fn s(self) -> DrawResult<T> {
        self.map_err(|e| e.to_string())
    }
}

/// How a line is stroked: dash length and gap in pixels (`Solid` has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
    Long,
}

impl Dash {
    /// `(dash, gap)` in pixels for the dashed kinds.
    pub fn pattern(self) -> Option<(u32, u32)> {
        match self {
            Dash::Solid => None,
            Dash::Dashed => Some((8, 5)),
            Dash::Dotted => Some((2, 4)),
            Dash::Long => Some((16, 6)),
        }
    }
}

/// One optimizer's look in every figure.
#[derive(Clone, Copy, Debug)]
pub struct OptimizerStyle {
    pub name: &'static str,
    pub color: RGBColor,
    pub dash: Dash,
}

const fn style(name: &'static str, (r, g, b): (u8, u8, u8), dash: Dash) -> OptimizerStyle {
    OptimizerStyle {
        name,
        color: RGBColor(r, g, b),
        dash,
    }
}

/// Every optimizer rule's colour and line style, one table for all figures, so a rule looks
/// the same in `compare`, `linreg`, the toys and the landscapes. The colours are distinct on
/// their own (no two closer than `tests::MIN_STYLE_COLOR_DISTANCE` in RGB); variants of one family share a
/// hue (SAM's reds, SSAM's oranges, the look-ahead pair's teals) and differ in dash as well, so
/// the figure stays readable in grey-scale print.
pub const OPTIMIZER_STYLES: [OptimizerStyle; 18] = [
    style("sgd", (40, 40, 40), Dash::Solid),
    style("sam", (214, 39, 40), Dash::Solid),
    style("sam-adaptive", (255, 120, 110), Dash::Dashed),
    style("asam", (31, 119, 180), Dash::Solid),
    style("friendlysam", (44, 160, 44), Dash::Solid),
    style("gsam", (148, 103, 189), Dash::Solid),
    style("looksam", (170, 190, 20), Dash::Dashed),
    style("imbsam", (227, 119, 194), Dash::Solid),
    style("ssam-f", (255, 127, 14), Dash::Solid),
    style("ssam-d", (140, 86, 75), Dash::Dashed),
    style("ssam-l", (220, 180, 100), Dash::Dotted),
    style("esam", (23, 190, 207), Dash::Solid),
    style("sam-on", (100, 100, 255), Dash::Dotted),
    style("rst", (127, 127, 127), Dash::Long),
    style("eg-sam", (0, 110, 110), Dash::Solid),
    style("og-sam", (90, 200, 140), Dash::Long),
    style("mesa", (20, 30, 120), Dash::Dashed),
    style("saf", (130, 0, 60), Dash::Dotted),
];

/// The style of optimizer `name` (case-insensitive; `base` is SGD), if the table has it.
pub fn optimizer_style(name: &str) -> Option<&'static OptimizerStyle> {
    let lower = name.to_ascii_lowercase();
    let key = if lower == "base" {
        "sgd"
    } else {
        lower.as_str()
    };
    OPTIMIZER_STYLES.iter().find(|s| s.name == key)
}

/// The style of a name the table does not have: a grey-blue long dash, unlike every entry.
const UNKNOWN_STYLE: OptimizerStyle = style("?", (100, 120, 140), Dash::Long);

/// One color per optimizer, the same in every figure.
pub fn optimizer_color(name: &str) -> RGBColor {
    optimizer_style(name).unwrap_or(&UNKNOWN_STYLE).color
}

/// The line style of optimizer `name`, the same in every figure.
pub fn optimizer_dash(name: &str) -> Dash {
    optimizer_style(name).unwrap_or(&UNKNOWN_STYLE).dash
}

/// The colour of a cell whose value is not finite (inf or NaN): magenta, which no colour map
/// or palette here uses, so a blown-up region cannot pass for a high or low value.
pub const NON_FINITE: RGBColor = RGBColor(255, 0, 255);

/// The viridis colour at `t` in [0, 1] (clamped), or [`NON_FINITE`] for a non-finite `t`:
/// plotters' colour maps panic on NaN.
pub fn viridis(t: f64) -> RGBColor {
    if t.is_finite() {
        ViridisRGB::get_color(t.clamp(0.0, 1.0))
    } else {
        NON_FINITE
    }
}

/// A qualitative palette for series that are not optimizers.
pub fn palette(i: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

/// Draws one PNG file, atomically: plotters encodes it into a temporary file beside `path`
/// (its name ends in `.png`, which picks the encoder), renamed over `path` by
/// [`samkit_train::files::write_atomic_with`]; a failed drawing or write leaves no file.
pub fn png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    init_fonts();
    samkit_train::files::write_atomic_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| CliError::plot(path, e))?;
        draw(&root).map_err(|e| CliError::plot(path, e))?;
        root.present().map_err(|e| CliError::plot(path, e))?;
        Ok(())
    })
}

/// Draws an animated GIF, one call of `draw` per frame: plotters renders each frame into an
/// RGB buffer and [`crate::gif::GifWriter`] encodes it.
pub fn gif(
    path: &Path,
    (w, h): (u32, u32),
    frame_delay_ms: u32,
    frames: usize,
    mut draw: impl FnMut(usize, &Area) -> DrawResult,
) -> Result<()> {
    init_fonts();
    // Atomic as every output: the frames stream into a temporary file beside `path`.
    samkit_train::files::write_atomic_with(path, |tmp| {
        let io = |e| CliError::io(path, e);
        let file = std::fs::File::create(tmp).map_err(io)?;
        let delay_cs = (frame_delay_ms.div_ceil(10)).min(u16::MAX as u32) as u16;
        let mut writer =
            GifWriter::new(std::io::BufWriter::new(file), w as u16, h as u16, delay_cs)
                .map_err(io)?;
        let mut buf = vec![0u8; 3 * w as usize * h as usize];
        for k in 0..frames {
            {
                let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
                root.fill(&WHITE).map_err(|e| CliError::plot(path, e))?;
                draw(k, &root).map_err(|e| CliError::plot(path, e))?;
                root.present().map_err(|e| CliError::plot(path, e))?;
            }
            writer.add_frame(&buf).map_err(io)?;
        }
        writer.finish().map_err(io)?;
        Ok(())
    })
}

/// A title strip on top of `area`; returns the rest.
pub fn titled<'a>(area: &Area<'a>, title: &str, size: u32) -> DrawResult<Area<'a>> {
    area.titled(title, (FONT, size)).s()
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    pub dash: Dash,
    pub markers: bool,
    pub width: u32,
}

impl Series {
    pub fn line(name: impl Into<String>, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            color,
            points,
            dash: Dash::Solid,
            markers: false,
            width: 2,
        }
    }

    /// A line in optimizer `name`'s colour and dash from [`OPTIMIZER_STYLES`].
    pub fn optimizer(name: &str, points: Vec<(f64, f64)>) -> Self {
        let mut s = Series::line(name, optimizer_color(name), points);
        s.dash = optimizer_dash(name);
        s
    }

    pub fn dashed(mut self) -> Self {
        self.dash = Dash::Dashed;
        self
    }

    pub fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// Axes of a line chart.
#[derive(Clone, Debug)]
pub struct Axes {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    /// Fixed ranges; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub legend: SeriesLabelPosition,
    /// Ticks of the x axis at whole numbers only (epochs, steps), on a linear axis.
    pub x_integer: bool,
    /// Named positions on the x axis, drawn as dashed vertical lines labelled at the top.
    pub x_marks: Vec<(f64, String)>,
}

impl Axes {
    pub fn new(title: impl Into<String>, x: impl Into<String>, y: impl Into<String>) -> Self {
        Axes {
            title: title.into(),
            x_label: x.into(),
            y_label: y.into(),
            x_log: false,
            y_log: false,
            x_range: None,
            y_range: None,
            legend: SeriesLabelPosition::UpperRight,
            x_integer: false,
            x_marks: Vec::new(),
        }
    }

    /// Whole-number ticks on the x axis (epochs): no `1.5`-th epoch.
    pub fn integer_x(mut self) -> Self {
        self.x_integer = true;
        self
    }

    pub fn log_y(mut self) -> Self {
        self.y_log = true;
        self
    }

    pub fn log_log(mut self) -> Self {
        self.x_log = true;
        self.y_log = true;
        self
    }

    pub fn legend_at(mut self, pos: SeriesLabelPosition) -> Self {
        self.legend = pos;
        self
    }
}

/// The range a set of values needs on an axis: padded by 5 % (linear) or a fraction of a
/// decade (log, positive values only).
pub fn fit_range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (0.1, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        let (a, b) = (lo.log10(), hi.log10());
        let pad = ((b - a) * 0.05).max(0.05);
        let (mut a, b) = (a - pad, b + pad);
        // plotters labels a log axis at powers of ten only: keep one inside the range.
        if b.floor() < a.ceil() {
            a = a.floor();
        }
        (10f64.powf(a), 10f64.powf(b))
    } else {
        let span = hi - lo;
        let pad = if span > 0.0 {
            span * 0.05
        } else {
            lo.abs().max(1.0) * 0.05
        };
        (lo - pad, hi + pad)
    }
}

/// A legend sample of a line in `dash`, `len` pixels long from `(lx, ly)` (a solid line is one
/// dash as long as the sample).
pub fn legend_line(
    lx: i32,
    ly: i32,
    len: i32,
    dash: Dash,
    style: ShapeStyle,
) -> DashedPathElement<std::vec::IntoIter<(i32, i32)>, i32> {
    let (on, off) = dash
        .pattern()
        .map_or((len, 1), |(a, b)| (a as i32, b as i32));
    DashedPathElement::new(vec![(lx, ly), (lx + len, ly)], on, off, style)
}

/// A line chart in `area`.
pub fn line_chart(area: &Area, axes: &Axes, series: &[Series]) -> DrawResult {
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (x0, x1) = axes.x_range.unwrap_or_else(|| fit_range(xs(), axes.x_log));
    let (y0, y1) = axes.y_range.unwrap_or_else(|| fit_range(ys(), axes.y_log));
    let lin = |a: f64, b: f64| RangedCoordf64::from(a..b);
    let log = |a: f64, b: f64| LogCoord::<f64>::from((a..b).log_scale());
    if axes.x_integer && !axes.x_log {
        let xi = FixedTicks(lin(x0, x1), integer_ticks(x0, x1, MAX_INTEGER_TICKS));
        return if axes.y_log {
            lines_in(area, axes, series, xi, log(y0, y1))
        } else {
            lines_in(area, axes, series, xi, lin(y0, y1))
        };
    }
    match (axes.x_log, axes.y_log) {
        (false, false) => lines_in(area, axes, series, lin(x0, x1), lin(y0, y1)),
        (true, false) => lines_in(area, axes, series, log(x0, x1), lin(y0, y1)),
        (false, true) => lines_in(area, axes, series, lin(x0, x1), log(y0, y1)),
        (true, true) => lines_in(area, axes, series, log(x0, x1), log(y0, y1)),
    }
}

/// A linear axis with the given ticks (plotters' `WithKeyPoints` has no value formatter).
struct FixedTicks(RangedCoordf64, Vec<f64>);

impl Ranged for FixedTicks {
    type ValueType = f64;
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;

    fn range(&self) -> std::ops::Range<f64> {
        self.0.range()
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.0.map(value, limit)
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // The light mesh lines get no points of their own: the ticks are the whole numbers.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.1.clone()
        }
    }
}

/// At most this many ticks on a whole-number axis (80 epochs get a tick every 10).
pub const MAX_INTEGER_TICKS: usize = 12;

/// Whole numbers in `[lo, hi]`, every `k`-th so that at most `max` remain (`k` a 1-2-5 step).
pub fn integer_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    let (a, b) = (lo.ceil(), hi.floor());
    let count = (b - a).max(0.0) + 1.0;
    let mut step = 1.0;
    'find: for decade in [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6] {
        for m in [1.0, 2.0, 5.0] {
            step = m * decade;
            if count / step <= max.max(1) as f64 {
                break 'find;
            }
        }
    }
    let first = (a / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= b {
        out.push(v);
        v += step;
    }
    out
}

/// A tick label for `v` on an axis spanning `span`: a value within rounding of zero on that
/// scale (`-6e-17` from summing steps of 0.1) reads `0`.
pub fn tick_on(v: f64, span: f64) -> String {
    if v.abs() <= TICK_ZERO_FRACTION * span.abs() {
        "0".into()
    } else {
        tick(v)
    }
}

/// A tick closer to zero than this fraction of the axis span is zero (rounding of steps).
pub const TICK_ZERO_FRACTION: f64 = 1e-9;

/// Tick labels that stay short on any scale.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

fn lines_in<X, Y>(area: &Area, axes: &Axes, series: &[Series], x: X, y: Y) -> DrawResult
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (xr, yr) = (x.range(), y.range());
    let (x_span, y_span) = (xr.end - xr.start, yr.end - yr.start);
    let mut chart = ChartBuilder::on(area)
        .caption(&axes.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .s()?;
    chart
        .configure_mesh()
        .x_desc(axes.x_label.as_str())
        .y_desc(axes.y_label.as_str())
        .x_label_formatter(&|v| tick_on(*v, x_span))
        .y_label_formatter(&|v| tick_on(*v, y_span))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .s()?;
    for s in series {
        let color = s.color;
        let style = color.stroke_width(s.width);
        let pts = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite());
        let anno = match s.dash.pattern() {
            Some((size, gap)) => chart
                .draw_series(DashedLineSeries::new(pts.clone(), size, gap, style))
                .s()?,
            None => chart.draw_series(LineSeries::new(pts.clone(), style)).s()?,
        };
        if !s.name.is_empty() {
            let dash = s.dash;
            anno.label(s.name.as_str())
                .legend(move |(lx, ly)| legend_line(lx, ly, 24, dash, color.stroke_width(2)));
        }
        if s.markers {
            chart
                .draw_series(pts.map(|p| Circle::new(p, 3, color.filled())))
                .s()?;
        }
    }
    for (x, name) in &axes.x_marks {
        if !(xr.start..=xr.end).contains(x) {
            continue;
        }
        let grey = RGBColor(90, 90, 90);
        chart
            .draw_series(DashedLineSeries::new(
                [(*x, yr.start), (*x, yr.end)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .s()?;
        let style = TextStyle::from((FONT, 14).into_font())
            .color(&grey)
            .pos(Pos::new(HPos::Left, VPos::Top));
        // Just right of the line, below the top edge (offsets in pixels from the anchor).
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*x, yr.end)) + Text::new(name.clone(), (4, 4), style),
            ))
            .s()?;
    }
    if series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .position(axes.legend.clone())
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .s()?;
    }
    Ok(())
}

/// A bar chart: one bar per category, its value printed above it.
pub fn bar_chart(
    area: &Area,
    title: &str,
    y_label: &str,
    categories: &[String],
    values: &[f64],
    color: RGBColor,
) -> DrawResult {
    let colors = vec![color; values.len()];
    bar_chart_colored(area, title, y_label, categories, values, &colors)
}

/// The frame of a chart with one bar per category: the categories along x, each name under
/// the centre of its unit-wide slot, and the values on y.
struct CategoryFrame<'n> {
    title: &'n str,
    y_label: &'n str,
    names: &'n [String],
    y: std::ops::Range<f64>,
    x_label_area: u32,
    label_size: u32,
}

type CategoryChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The chart of `f` with its caption, axes and grid drawn, ready for the bars.
fn category_chart<'a, 'b>(
    area: &'a Area<'b>,
    f: &CategoryFrame,
) -> DrawResult<CategoryChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(f.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(f.x_label_area)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..f.names.len().max(1) as f64, f.y.clone())
        .s()?;
    let names = f.names.to_vec();
    // A name at the centre of its slot only: the mesh asks for labels at every half unit.
    let fmt = move |v: &f64| -> String {
        let i = v.floor();
        if (v - i - 0.5).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(f.names.len() * 2 + 1)
        .x_label_formatter(&fmt)
        .y_label_formatter(&|v| tick(*v))
        .y_desc(f.y_label)
        .label_style((FONT, f.label_size))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .s()?;
    Ok(chart)
}

/// A bar chart with a colour per bar (an optimizer's own, say).
pub fn bar_chart_colored(
    area: &Area,
    title: &str,
    y_label: &str,
    categories: &[String],
    values: &[f64],
    colors: &[RGBColor],
) -> DrawResult {
    let top = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let bottom = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::min);
    let span = (top - bottom).max(1e-12);
    let mut chart = category_chart(
        area,
        &CategoryFrame {
            title,
            y_label,
            names: categories,
            y: bottom..top + 0.15 * span,
            x_label_area: 40,
            label_size: 14,
        },
    )?;
    for (i, &v) in values.iter().enumerate() {
        let x = i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.18, 0.0), (x + 0.82, v)],
                colors.get(i).copied().unwrap_or(BLACK).mix(0.85).filled(),
            )))
            .s()?;
        let style =
            TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(std::iter::once(Text::new(
                significant(v, 4),
                (x + 0.5, v.max(0.0) + 0.02 * span),
                style,
            )))
            .s()?;
    }
    Ok(())
}

/// `v` to `digits` significant digits, without trailing zeros (`437.25` → `437.3`,
/// `2000.0` → `2000`, `0.0123456` → `0.01235`).
pub fn significant(v: f64, digits: usize) -> String {
    if !v.is_finite() || v == 0.0 {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i64;
    let decimals = (digits as i64 - 1 - magnitude).max(0) as usize;
    // Rounded half away from zero first: `format!` rounds an exact tie to even (437.25 to
    // "437.2"), where a label reads as the usual rounding ("437.3").
    let scale = 10f64.powi(decimals as i32);
    let rounded = (v * scale).round() / scale;
    // A value so small that the scale overflows keeps `format!`'s own rounding.
    let rounded = if rounded.is_finite() { rounded } else { v };
    let s = format!("{rounded:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// One optimizer's mean seconds per step, one value per phase (in the chart's phase order).
#[derive(Clone, Debug)]
pub struct StepCost {
    pub optimizer: String,
    pub seconds: Vec<f64>,
}

/// The phases of a training step as `compare` times them, in stacking order (bottom first).
pub const STEP_PHASES: [&str; 6] = ["pass 1", "perturb", "pass 2", "update", "mask", "distill"];

/// The stacked bars of [`step_cost_chart`]: per optimizer, per phase, `(bottom, top)` in
/// milliseconds. A negative or non-finite time (a clock that went backwards, a skipped step's
/// NaN) stacks as zero so the bars above it stay where they belong.
pub fn stacked_ms(rows: &[StepCost]) -> Vec<Vec<(f64, f64)>> {
    rows.iter()
        .map(|r| {
            let mut top = 0.0;
            r.seconds
                .iter()
                .map(|&s| {
                    let ms = if s.is_finite() {
                        (1e3 * s).max(0.0)
                    } else {
                        0.0
                    };
                    let bar = (top, top + ms);
                    top += ms;
                    bar
                })
                .collect()
        })
        .collect()
}

/// Stacked per-phase bars of the mean step time, one bar per optimizer, its total above it.
pub fn step_cost_chart(area: &Area, title: &str, phases: &[&str], rows: &[StepCost]) -> DrawResult {
    let bars = stacked_ms(rows);
    let top = bars
        .iter()
        .filter_map(|b| b.last().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-6);
    let names: Vec<String> = rows.iter().map(|r| r.optimizer.clone()).collect();
    let mut chart = category_chart(
        area,
        &CategoryFrame {
            title,
            y_label: "mean time per step (ms)",
            names: &names,
            y: 0.0..top * 1.2,
            x_label_area: 44,
            label_size: 13,
        },
    )?;
    for (k, phase) in phases.iter().enumerate() {
        let color = palette(k);
        let rects: Vec<_> = bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.get(k).map(|&(lo, hi)| (i as f64, lo, hi)))
            .map(|(x, lo, hi)| Rectangle::new([(x + 0.18, lo), (x + 0.82, hi)], color.filled()))
            .collect();
        chart
            .draw_series(rects)
            .s()?
            .label(*phase)
            .legend(move |(lx, ly)| {
                Rectangle::new([(lx, ly - 6), (lx + 16, ly + 6)], color.filled())
            });
    }
    let style = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, b) in bars.iter().enumerate() {
        let total = b.last().map_or(0.0, |p| p.1);
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{total:.1} ms"),
                (i as f64 + 0.5, total + 0.02 * top),
                style.clone(),
            )))
            .s()?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .s()?;
    Ok(())
}

/// A heatmap with a value printed in each cell; `values[row][col]`, rows drawn bottom-up.
/// Colors follow `color_values` (for instance a logarithm of `values`).
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub col_names: &'a [String],
    pub row_names: &'a [String],
    pub color_values: &'a [Vec<f64>],
    pub cell_text: &'a [Vec<String>],
}

pub fn heatmap(area: &Area, h: &Heatmap) -> DrawResult {
    let nc = h.col_names.len();
    let nr = h.row_names.len();
    let (lo, hi) = fit_range(h.color_values.iter().flatten().copied(), false);
    let mut chart = ChartBuilder::on(area)
        .caption(h.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..nc as f64, 0.0..nr as f64)
        .s()?;
    let cols = h.col_names.to_vec();
    let rows = h.row_names.to_vec();
    let pick = |names: &[String], v: f64| -> String {
        let i = v.floor();
        if (v - i - 0.5).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    let xf = |v: &f64| pick(&cols, *v);
    let yf = |v: &f64| pick(&rows, *v);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc * 2 + 1)
        .y_labels(nr * 2 + 1)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .x_desc(h.x_label)
        .y_desc(h.y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .s()?;
    for r in 0..nr {
        for c in 0..nc {
            let v = h.color_values[r][c];
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            let fill = viridis(t);
            let (x, y) = (c as f64, r as f64);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, y), (x + 1.0, y + 1.0)],
                    fill.filled(),
                )))
                .s()?;
            let text_color = if t > 0.6 { BLACK } else { WHITE };
            let style = TextStyle::from((FONT, 14).into_font())
                .color(&text_color)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart
                .draw_series(std::iter::once(Text::new(
                    h.cell_text[r][c].clone(),
                    (x + 0.5, y + 0.5),
                    style,
                )))
                .s()?;
        }
    }
    Ok(())
}

/// A scalar field on a regular grid: `values[j][i]` at `(xs[i], ys[j])`.
pub struct Field {
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
    pub values: Vec<Vec<f64>>,
}

impl Field {
    pub fn sample(
        (x0, x1): (f64, f64),
        (y0, y1): (f64, f64),
        n: usize,
        f: impl Fn(f64, f64) -> f64,
    ) -> Self {
        let lin = |a: f64, b: f64| -> Vec<f64> {
            (0..n)
                .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
                .collect()
        };
        let xs = lin(x0, x1);
        let ys = lin(y0, y1);
        let values = ys
            .iter()
            .map(|&y| xs.iter().map(|&x| f(x, y)).collect())
            .collect();
        Field { xs, ys, values }
    }
}

/// Iso-lines of `field` at `level` by marching squares: a list of segments.
/// Saddle cells are resolved with the cell-centre average.
pub fn contour_segments(field: &Field, level: f64) -> Vec<[(f64, f64); 2]> {
    let mut out = Vec::new();
    let v = &field.values;
    let lerp = |a: (f64, f64), b: (f64, f64), fa: f64, fb: f64| -> (f64, f64) {
        let t = if fb != fa {
            (level - fa) / (fb - fa)
        } else {
            0.5
        };
        (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
    };
    for j in 0..field.ys.len().saturating_sub(1) {
        for i in 0..field.xs.len().saturating_sub(1) {
            // Corners counter-clockwise from bottom-left.
            let p = [
                (field.xs[i], field.ys[j]),
                (field.xs[i + 1], field.ys[j]),
                (field.xs[i + 1], field.ys[j + 1]),
                (field.xs[i], field.ys[j + 1]),
            ];
            let f = [v[j][i], v[j][i + 1], v[j + 1][i + 1], v[j + 1][i]];
            if f.iter().any(|x| !x.is_finite()) {
                continue;
            }
            let above: Vec<bool> = f.iter().map(|&x| x > level).collect();
            // Edge k joins corner k and corner k+1.
            let cross: Vec<usize> = (0..4).filter(|&k| above[k] != above[(k + 1) % 4]).collect();
            let point = |k: usize| lerp(p[k], p[(k + 1) % 4], f[k], f[(k + 1) % 4]);
            match cross.len() {
                2 => out.push([point(cross[0]), point(cross[1])]),
                4 => {
                    let centre_above = f.iter().sum::<f64>() / 4.0 > level;
                    // Pair the edges so the region of the centre stays connected.
                    if centre_above == above[0] {
                        out.push([point(0), point(1)]);
                        out.push([point(2), point(3)]);
                    } else {
                        out.push([point(3), point(0)]);
                        out.push([point(1), point(2)]);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// A path drawn over a contour plot.
pub struct Path2 {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// A contour plot of `ln(1 + f)` with trajectories, a start cross and a star at `star`.
pub struct ContourPlot<'a> {
    pub title: &'a str,
    pub field: &'a Field,
    pub levels: &'a [f64],
    pub paths: &'a [Path2],
    pub start: (f64, f64),
    pub star: (f64, f64),
    pub star_label: &'a str,
    /// A saddle point to mark with a triangle.
    pub saddle: Option<(f64, f64)>,
}

/// The five-pointed star polygon around `c` (outer radius `r`, in data units per axis).
pub fn star_polygon(c: (f64, f64), rx: f64, ry: f64) -> Vec<(f64, f64)> {
    (0..10)
        .map(|k| {
            let a = std::f64::consts::FRAC_PI_2 + k as f64 * std::f64::consts::PI / 5.0;
            let s = if k % 2 == 0 { 1.0 } else { 0.4 };
            (c.0 + s * rx * a.cos(), c.1 + s * ry * a.sin())
        })
        .collect()
}

pub fn contour_plot(area: &Area, c: &ContourPlot) -> DrawResult {
    let f = c.field;
    let (x0, x1) = (f.xs[0], *f.xs.last().unwrap_or(&1.0));
    let (y0, y1) = (f.ys[0], *f.ys.last().unwrap_or(&1.0));
    let mut chart = ChartBuilder::on(area)
        .caption(c.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, y0..y1)
        .s()?;
    // Pale background shading by the (log) value; a cell with a non-finite corner in full
    // [`NON_FINITE`], named in the legend.
    let (lo, hi) = fit_range(f.values.iter().flatten().copied(), false);
    let mut cells = Vec::new();
    let mut non_finite = 0;
    for j in 0..f.ys.len().saturating_sub(1) {
        for i in 0..f.xs.len().saturating_sub(1) {
            let corners = [
                f.values[j][i],
                f.values[j][i + 1],
                f.values[j + 1][i],
                f.values[j + 1][i + 1],
            ];
            let fill = if corners.iter().all(|v| v.is_finite()) {
                let v = (f.values[j][i] + f.values[j + 1][i + 1]) / 2.0;
                let col = viridis((v - lo) / (hi - lo));
                RGBColor(
                    (col.0 as f64 * 0.35 + 255.0 * 0.65) as u8,
                    (col.1 as f64 * 0.35 + 255.0 * 0.65) as u8,
                    (col.2 as f64 * 0.35 + 255.0 * 0.65) as u8,
                )
            } else {
                non_finite += 1;
                NON_FINITE
            };
            cells.push(Rectangle::new(
                [(f.xs[i], f.ys[j]), (f.xs[i + 1], f.ys[j + 1])],
                fill.filled(),
            ));
        }
    }
    chart.draw_series(cells).s()?;
    if non_finite > 0 {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .s()?
            .label(format!("inf/NaN value ({non_finite} cells)"))
            .legend(|(lx, ly)| {
                Rectangle::new([(lx, ly - 6), (lx + 20, ly + 6)], NON_FINITE.filled())
            });
    }
    for (k, &level) in c.levels.iter().enumerate() {
        let t = k as f64 / (c.levels.len().max(2) - 1) as f64;
        let col = viridis(t);
        let segs = contour_segments(f, level);
        chart
            .draw_series(
                segs.into_iter()
                    .map(|s| PathElement::new(s.to_vec(), col.mix(0.9).stroke_width(1))),
            )
            .s()?;
    }
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("x")
        .y_desc("y")
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .s()?;
    for p in c.paths {
        let color = p.color;
        let clipped: Vec<(f64, f64)> = p
            .points
            .iter()
            .copied()
            .filter(|q| q.0.is_finite() && q.1.is_finite())
            .map(|q| (q.0.clamp(x0, x1), q.1.clamp(y0, y1)))
            .collect();
        // Segment by segment: a thick polyline's miter joins turn a zig-zag into spikes.
        chart
            .draw_series(
                clipped
                    .windows(2)
                    .map(|s| PathElement::new(s.to_vec(), color.stroke_width(2))),
            )
            .s()?
            .label(p.name.as_str())
            .legend(move |(lx, ly)| {
                PathElement::new(vec![(lx, ly), (lx + 20, ly)], color.stroke_width(3))
            });
        if let Some(&end) = clipped.last() {
            chart
                .draw_series(std::iter::once(Circle::new(end, 5, color.filled())))
                .s()?;
        }
    }
    if let Some(sp) = c.saddle {
        chart
            .draw_series(std::iter::once(TriangleMarker::new(sp, 9, BLACK.filled())))
            .s()?
            .label(format!("saddle ({}, {})", tick(sp.0), tick(sp.1)))
            .legend(|(lx, ly)| TriangleMarker::new((lx + 10, ly), 6, BLACK.filled()));
    }
    chart
        .draw_series(std::iter::once(Cross::new(
            c.start,
            8,
            BLACK.stroke_width(3),
        )))
        .s()?
        .label("start")
        .legend(|(lx, ly)| Cross::new((lx + 10, ly), 5, BLACK.stroke_width(2)));
    let rx = (x1 - x0) * 0.025;
    let ry = (y1 - y0) * 0.025;
    let gold = RGBColor(255, 200, 0);
    chart
        .draw_series(std::iter::once(Polygon::new(
            star_polygon(c.star, rx, ry),
            gold.filled(),
        )))
        .s()?
        .label(c.star_label)
        .legend(move |(lx, ly)| {
            let pts: Vec<(i32, i32)> = star_polygon((lx as f64 + 10.0, ly as f64), 8.0, -8.0)
                .into_iter()
                .map(|(a, b)| (a as i32, b as i32))
                .collect();
            Polygon::new(pts, gold.filled())
        });
    chart
        .draw_series(std::iter::once(PathElement::new(
            {
                let mut v = star_polygon(c.star, rx, ry);
                v.push(v[0]);
                v
            },
            BLACK.stroke_width(1),
        )))
        .s()?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(120, 120, 120))
        .draw()
        .s()?;
    Ok(())
}

/// A colour scale shared by several panels: linear in the value, or in its logarithm when
/// every value is positive and they span more than [`LOG_SCALE_RATIO`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ColorScale {
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
}

/// Values spanning more than this ratio (hi/lo) are coloured by their logarithm: one sharp
/// wall of a loss surface would otherwise take the whole colour range.
pub const LOG_SCALE_RATIO: f64 = 10.0;

impl ColorScale {
    /// The scale of the finite values in `values` (`None` when there are none).
    pub fn of(values: impl Iterator<Item = f64>) -> Option<Self> {
        let (lo, hi) = values
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            return None;
        }
        Some(ColorScale {
            lo,
            hi,
            log: lo > 0.0 && hi / lo > LOG_SCALE_RATIO,
        })
    }

    fn warp(&self, v: f64) -> f64 {
        if self.log {
            v.max(self.lo).ln()
        } else {
            v
        }
    }

    /// Position of `v` on the scale, 0 at `lo` and 1 at `hi` (NaN for a non-finite `v`).
    pub fn position(&self, v: f64) -> f64 {
        if !v.is_finite() {
            return f64::NAN;
        }
        let (a, b) = (self.warp(self.lo), self.warp(self.hi));
        if b > a {
            ((self.warp(v) - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.5
        }
    }

    /// The value at position `t` in [0, 1].
    pub fn value_at(&self, t: f64) -> f64 {
        let (a, b) = (self.warp(self.lo), self.warp(self.hi));
        let x = a + t * (b - a);
        if self.log {
            x.exp()
        } else {
            x
        }
    }

    pub fn color(&self, v: f64) -> RGBColor {
        viridis(self.position(v))
    }

    /// `k` levels evenly spaced on the scale, strictly inside it.
    pub fn levels(&self, k: usize) -> Vec<f64> {
        (1..=k)
            .map(|i| self.value_at(i as f64 / (k + 1) as f64))
            .collect()
    }
}

/// A vertical colour bar of `scale` in `area`, labelled `label`, with five value ticks.
pub fn color_bar(area: &Area, scale: &ColorScale, label: &str) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .margin_top(50)
        .margin_bottom(50)
        .margin_right(8)
        .y_label_area_size(58)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .s()?;
    let sc = *scale;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .y_label_formatter(&|t| tick_on(sc.value_at(*t), sc.hi - sc.lo))
        .y_desc(if scale.log {
            format!("{label} (log colour scale)")
        } else {
            label.to_string()
        })
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .s()?;
    const STRIPES: usize = 100;
    chart
        .draw_series((0..STRIPES).map(|k| {
            let (a, b) = (k as f64 / STRIPES as f64, (k + 1) as f64 / STRIPES as f64);
            Rectangle::new([(0.0, a), (1.0, b)], viridis((a + b) / 2.0).filled())
        }))
        .s()?;
    Ok(())
}

/// One panel of `landscape`: a filled map of `field` on a shared colour scale, iso-lines at
/// `levels`, a star at the lowest point and the checkpoint's marker drawn last (on top).
pub struct LandscapePanel<'a> {
    pub title: &'a str,
    pub field: &'a Field,
    pub scale: &'a ColorScale,
    pub levels: &'a [f64],
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub lowest: Option<(f64, f64)>,
    pub checkpoint: (f64, f64),
}

pub fn landscape_panel(area: &Area, p: &LandscapePanel) -> DrawResult {
    let f = p.field;
    let (x0, x1) = (f.xs[0], *f.xs.last().unwrap_or(&1.0));
    let (y0, y1) = (f.ys[0], *f.ys.last().unwrap_or(&1.0));
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, (FONT, 17))
        .margin(10)
        .x_label_area_size(42)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, y0..y1)
        .s()?;
    // Each cell in the colour of its mean corner value (magenta if a corner is inf/NaN).
    let mut cells = Vec::new();
    for j in 0..f.ys.len().saturating_sub(1) {
        for i in 0..f.xs.len().saturating_sub(1) {
            let c = [
                f.values[j][i],
                f.values[j][i + 1],
                f.values[j + 1][i],
                f.values[j + 1][i + 1],
            ];
            let fill = if c.iter().all(|v| v.is_finite()) {
                p.scale.color(c.iter().sum::<f64>() / 4.0)
            } else {
                NON_FINITE
            };
            cells.push(Rectangle::new(
                [(f.xs[i], f.ys[j]), (f.xs[i + 1], f.ys[j + 1])],
                fill.filled(),
            ));
        }
    }
    chart.draw_series(cells).s()?;
    for &level in p.levels {
        chart
            .draw_series(
                contour_segments(f, level)
                    .into_iter()
                    .map(|s| PathElement::new(s.to_vec(), WHITE.mix(0.7).stroke_width(1))),
            )
            .s()?;
    }
    let (xs, ys) = (x1 - x0, y1 - y0);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(p.x_label)
        .y_desc(p.y_label)
        .x_label_formatter(&|v| tick_on(*v, xs))
        .y_label_formatter(&|v| tick_on(*v, ys))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .s()?;
    let gold = RGBColor(255, 200, 0);
    if let Some(star) = p.lowest {
        let (rx, ry) = (xs * 0.03, ys * 0.03);
        chart
            .draw_series(std::iter::once(Polygon::new(
                star_polygon(star, rx, ry),
                gold.filled(),
            )))
            .s()?
            .label("lowest loss on the grid")
            .legend(move |(lx, ly)| {
                let pts: Vec<(i32, i32)> = star_polygon((lx as f64 + 10.0, ly as f64), 8.0, -8.0)
                    .into_iter()
                    .map(|(a, b)| (a as i32, b as i32))
                    .collect();
                Polygon::new(pts, gold.filled())
            });
        let mut outline = star_polygon(star, rx, ry);
        outline.push(outline[0]);
        chart
            .draw_series(std::iter::once(PathElement::new(
                outline,
                BLACK.stroke_width(1),
            )))
            .s()?;
    }
    // The checkpoint last, a ringed dot smaller than the star: visible when both coincide.
    chart
        .draw_series(std::iter::once(Circle::new(
            p.checkpoint,
            6,
            WHITE.filled(),
        )))
        .s()?;
    chart
        .draw_series(std::iter::once(Circle::new(
            p.checkpoint,
            6,
            BLACK.stroke_width(2),
        )))
        .s()?
        .label("checkpoint (0, 0)")
        .legend(|(lx, ly)| Circle::new((lx + 10, ly), 5, BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(120, 120, 120))
        .draw()
        .s()?;
    Ok(())
}

/// A 3-D surface of `field` over (alpha, beta) (height and colour on the shared `scale`; non-finite values
/// are left out), its cells drawn far to near.
pub fn surface_3d(area: &Area, title: &str, field: &Field, scale: &ColorScale) -> DrawResult {
    let f = field;
    let (x0, x1) = (f.xs[0], *f.xs.last().unwrap_or(&1.0));
    let (y0, y1) = (f.ys[0], *f.ys.last().unwrap_or(&1.0));
    // Heights on the colour scale's axis: log-coloured surfaces are drawn in log height too.
    let z = |v: f64| scale.position(v);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(10)
        .build_cartesian_3d(x0..x1, 0.0..1.0, y0..y1)
        .s()?;
    chart.with_projection(|mut pb| {
        pb.yaw = 0.7;
        pb.pitch = 0.45;
        pb.scale = 0.85;
        pb.into_matrix()
    });
    let sc = *scale;
    let (xs, ys) = (x1 - x0, y1 - y0);
    chart
        .configure_axes()
        .label_style((FONT, 12))
        .x_formatter(&|v| tick_on(*v, xs))
        .z_formatter(&|v| tick_on(*v, ys))
        .y_formatter(&|t| tick_on(sc.value_at(*t), sc.hi - sc.lo))
        .draw()
        .s()?;
    let mut quads = Vec::new();
    for j in 0..f.ys.len().saturating_sub(1) {
        for i in 0..f.xs.len().saturating_sub(1) {
            let c = [
                f.values[j][i],
                f.values[j][i + 1],
                f.values[j + 1][i + 1],
                f.values[j + 1][i],
            ];
            if !c.iter().all(|v| v.is_finite()) {
                continue;
            }
            let pts = vec![
                (f.xs[i], z(c[0]), f.ys[j]),
                (f.xs[i + 1], z(c[1]), f.ys[j]),
                (f.xs[i + 1], z(c[2]), f.ys[j + 1]),
                (f.xs[i], z(c[3]), f.ys[j + 1]),
            ];
            let mean = c.iter().sum::<f64>() / 4.0;
            let (cx, cy, cz) = (
                (f.xs[i] + f.xs[i + 1]) / 2.0,
                z(mean),
                (f.ys[j] + f.ys[j + 1]) / 2.0,
            );
            let depth = chart.as_coord_spec().projected_depth(&cx, &cy, &cz);
            quads.push((depth, pts, scale.color(mean)));
        }
    }
    // Painter's order: the deepest (farthest) cells first.
    quads.sort_by_key(|q| std::cmp::Reverse(q.0));
    for (_, pts, color) in quads {
        let mut outline = pts.clone();
        outline.push(pts[0]);
        chart
            .draw_series(std::iter::once(Polygon::new(pts, color.filled())))
            .s()?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                outline,
                BLACK.mix(0.25).stroke_width(1),
            )))
            .s()?;
    }
    Ok(())
}

/// Lines of text in a monospace-free layout: each row's cells at fixed pixel columns.
pub fn text_table(area: &Area, title: &str, rows: &[Vec<String>], widths: &[i32]) -> DrawResult {
    let style = TextStyle::from((FONT, 14).into_font());
    area.draw(&Text::new(
        title.to_string(),
        (10, 6),
        (FONT, 16).into_font(),
    ))
    .s()?;
    for (r, row) in rows.iter().enumerate() {
        let mut x = 10;
        let y = 30 + 20 * r as i32;
        for (c, cell) in row.iter().enumerate() {
            area.draw(&Text::new(cell.clone(), (x, y), style.clone()))
                .s()?;
            x += widths.get(c).copied().unwrap_or(100);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contour_of_a_paraboloid_is_a_circle() {
        let field = Field::sample((-2.0, 2.0), (-2.0, 2.0), 81, |x, y| x * x + y * y);
        let segs = contour_segments(&field, 1.0);
        assert!(segs.len() > 50);
        for s in segs {
            for p in s {
                let r = (p.0 * p.0 + p.1 * p.1).sqrt();
                assert!((r - 1.0).abs() < 0.01, "point {p:?} at radius {r}");
            }
        }
    }

    #[test]
    fn contour_skips_levels_outside_the_field() {
        let field = Field::sample((0.0, 1.0), (0.0, 1.0), 5, |x, _| x);
        assert!(contour_segments(&field, 2.0).is_empty());
        assert_eq!(contour_segments(&field, 0.3).len(), 4);
    }

    #[test]
    fn fit_range_pads_and_handles_degenerate_input() {
        let (a, b) = fit_range([1.0, 3.0].into_iter(), false);
        assert!(a < 1.0 && b > 3.0);
        let (a, b) = fit_range([1e-3, 1e-1, -1.0, 0.0].into_iter(), true);
        assert!(a > 0.0 && a < 1e-3 && b > 1e-1);
        // A range without a power of ten reaches down to one.
        let (a, b) = fit_range([0.25, 0.7].into_iter(), true);
        assert!(a <= 0.1 + 1e-12 && b > 0.7, "{a} {b}");
        assert_eq!(fit_range(std::iter::empty(), false), (0.0, 1.0));
        let (a, b) = fit_range([2.0].into_iter(), false);
        assert!(a < 2.0 && b > 2.0);
    }

    #[test]
    fn non_finite_values_get_their_own_colour_not_a_panic() {
        assert_eq!(viridis(f64::NAN), NON_FINITE);
        assert_eq!(viridis(f64::INFINITY), NON_FINITE);
        assert_ne!(viridis(0.0), NON_FINITE);
        assert_eq!(viridis(7.0), viridis(1.0));
        // A contour plot of a field with inf and NaN values draws, with the cells marked.
        let field = Field::sample((-1.0, 1.0), (-1.0, 1.0), 9, |x, y| {
            if x > 0.5 {
                f64::INFINITY
            } else if y > 0.5 {
                f64::NAN
            } else {
                x * x + y * y
            }
        });
        init_fonts();
        let (w, h) = (200u32, 160u32);
        let mut buf = vec![0u8; 3 * (w * h) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE).unwrap();
            contour_plot(
                &root,
                &ContourPlot {
                    title: "t",
                    field: &field,
                    levels: &[0.1, 0.5, f64::INFINITY, f64::NAN],
                    paths: &[],
                    start: (0.0, 0.0),
                    star: (0.0, 0.0),
                    star_label: "min",
                    saddle: None,
                },
            )
            .unwrap();
            root.present().unwrap();
        }
        let magenta = buf
            .chunks_exact(3)
            .filter(|p| *p == [NON_FINITE.0, NON_FINITE.1, NON_FINITE.2])
            .count();
        assert!(magenta > 100, "{magenta} magenta pixels");
    }

    /// The smallest Euclidean RGB distance between two optimizers' colours in the table.
    const MIN_STYLE_COLOR_DISTANCE: f64 = 60.0;

    /// Draws `draw` into a bitmap in memory (the tests read data, not pixels; this checks that
    /// the chart draws without an error).
    fn draws(draw: impl FnOnce(&Area) -> DrawResult) {
        init_fonts();
        let (w, h) = (640u32, 480u32);
        let mut buf = vec![0u8; 3 * (w * h) as usize];
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        draw(&root).unwrap();
        root.present().unwrap();
    }

    #[test]
    fn every_optimizer_has_its_own_colour_and_style() {
        let names: Vec<&str> = OPTIMIZER_STYLES.iter().map(|s| s.name).collect();
        for (i, a) in OPTIMIZER_STYLES.iter().enumerate() {
            for b in &OPTIMIZER_STYLES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert!(
                    (a.color, a.dash) != (b.color, b.dash),
                    "{} and {} look the same",
                    a.name,
                    b.name
                );
                let d = ((a.color.0 as f64 - b.color.0 as f64).powi(2)
                    + (a.color.1 as f64 - b.color.1 as f64).powi(2)
                    + (a.color.2 as f64 - b.color.2 as f64).powi(2))
                .sqrt();
                assert!(
                    d >= MIN_STYLE_COLOR_DISTANCE,
                    "{} and {}: colours {d:.0} apart",
                    a.name,
                    b.name
                );
            }
            // Not white on a white page, and not the inf/NaN magenta.
            assert!(
                a.color.0 as u32 + a.color.1 as u32 + a.color.2 as u32 <= 600,
                "{}",
                a.name
            );
            assert_ne!(a.color, NON_FINITE);
        }
        // Every rule the CLI trains, and every rule of the survey's list, has an entry.
        for name in crate::train::args::OPTIMIZERS {
            assert!(optimizer_style(name).is_some(), "{name} has no style");
        }
        for name in [
            "sgd",
            "sam",
            "sam-adaptive",
            "asam",
            "friendlysam",
            "ssam-f",
            "ssam-d",
            "ssam-l",
            "imbsam",
            "gsam",
            "looksam",
            "esam",
            "sam-on",
            "rst",
            "eg-sam",
            "og-sam",
            "mesa",
            "saf",
        ] {
            assert!(names.contains(&name), "{name} has no style");
        }
        // Stable across case and the `base` alias; the four that used to share one brown differ.
        assert_eq!(optimizer_color("SAM"), optimizer_color("sam"));
        assert_eq!(optimizer_color("base"), optimizer_color("sgd"));
        let browns: Vec<RGBColor> = ["ssam-d", "imbsam", "looksam", "sam-adaptive"]
            .iter()
            .map(|n| optimizer_color(n))
            .collect();
        for i in 0..browns.len() {
            for j in i + 1..browns.len() {
                assert_ne!(browns[i], browns[j]);
            }
        }
        let s = Series::optimizer("ssam-d", vec![(0.0, 1.0)]);
        assert_eq!((s.color, s.dash), (optimizer_color("ssam-d"), Dash::Dashed));
    }

    #[test]
    fn integer_ticks_are_whole_and_few() {
        assert_eq!(integer_ticks(0.85, 4.15, 12), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(integer_ticks(0.5, 1.5, 12), vec![1.0]);
        let t = integer_ticks(-3.0, 83.0, MAX_INTEGER_TICKS);
        assert!(t.len() <= MAX_INTEGER_TICKS && t.len() >= 5, "{t:?}");
        assert!(
            t.iter()
                .all(|v| v.fract() == 0.0 && (0.0..=83.0).contains(v)),
            "{t:?}"
        );
        assert!(integer_ticks(0.2, 0.8, 12).is_empty());
        assert!(integer_ticks(f64::NAN, 1.0, 12).is_empty());
        // A chart with whole-number epochs draws.
        let axes = Axes::new("acc", "epoch", "%").integer_x();
        let s = vec![Series::optimizer(
            "sam",
            vec![(1.0, 50.0), (2.0, 60.0), (3.0, 65.0)],
        )];
        draws(|a| line_chart(a, &axes, &s));
        draws(|a| line_chart(a, &axes.clone().log_y(), &s));
    }

    #[test]
    fn ticks_near_zero_on_the_axis_scale_read_zero() {
        assert_eq!(tick_on(-6e-17, 2.0), "0");
        assert_eq!(tick_on(0.5, 2.0), "0.5");
        // On an axis of span 1e-12 the same tiny value is a real tick.
        assert_ne!(tick_on(-6e-17, 1e-12), "0");
    }

    #[test]
    fn step_cost_bars_stack_to_the_total() {
        let rows = vec![
            StepCost {
                optimizer: "sgd".into(),
                seconds: vec![0.1, 0.0, 0.0, 0.001, 0.0, 0.0],
            },
            StepCost {
                optimizer: "sam".into(),
                seconds: vec![0.1, 0.002, 0.1, 0.001, f64::NAN, 0.003],
            },
        ];
        let bars = stacked_ms(&rows);
        assert_eq!(bars.len(), 2);
        for (b, r) in bars.iter().zip(&rows) {
            assert_eq!(b.len(), STEP_PHASES.len());
            assert_eq!(b[0].0, 0.0);
            for w in b.windows(2) {
                assert_eq!(w[0].1, w[1].0, "bars touch");
            }
            let total: f64 = r.seconds.iter().filter(|s| s.is_finite()).sum::<f64>() * 1e3;
            assert!((b[5].1 - total).abs() < 1e-9, "{} vs {total}", b[5].1);
        }
        assert!((bars[1][2].1 - bars[1][2].0 - 100.0).abs() < 1e-9);
        draws(|a| step_cost_chart(a, "cost", &STEP_PHASES, &rows));
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(significant(437.25, 4), "437.3");
        assert_eq!(significant(2000.0, 4), "2000");
        assert_eq!(significant(0.0123456, 4), "0.01235");
        assert_eq!(significant(-1.5, 4), "-1.5");
        assert_eq!(significant(0.0, 4), "0");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(250.0), "250");
        assert_eq!(tick(1e-5), "1e-5");
        assert_eq!(tick(1.0), "1");
    }
}
