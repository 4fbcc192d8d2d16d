"""Live: a camera, stream, video or watched folder scored frame by frame — the latest frame's heatmap and verdict, a
control chart of the scores against the threshold, the counts and the sinks' health, start and stop. The same
pipeline as `python -m inspection run`."""

from __future__ import annotations

import streamlit as st

from inspection.results.image import VERDICT_WORDS
from inspection.results.numbers import score_text
from inspection_app import caches, live_view, page, sidebar, teach_view
from inspection_app.charts import control_chart

page.page_setup("Live", "Score a camera, a stream, a video or a folder the camera software writes to, frame by "
                "frame, and send each verdict where the line listens (a folder, a CSV, a webhook, MQTT). When the "
                "model is slower than the source, the newest frame is scored and the ones in between are dropped "
                "and counted.")
dataset = sidebar.data_source_picker()
entry = sidebar.require_model(dataset)
status = live_view.LIVE.status()
running = status is not None and status.running

with st.form("live_form"):
    source_column, every_column = st.columns([3, 1])
    source = source_column.text_input(
        "Source", key="live_source", placeholder="usb:0  ·  rtsp://10.0.0.12/stream1  ·  /data/line3/incoming",
        help="A video file (played at its own frame rate), usb:N (a USB camera), an rtsp:// or http(s):// MJPEG "
             "stream, or a folder: images already there and each new one are scored once.")
    every = every_column.radio("Send", ["all", "defects"], key="live_every", horizontal=True,
                               format_func=lambda value: {"all": "every frame", "defects": "not good only"}[value])
    sinks = st.text_area("Sinks (one per line, optional)", key="live_sinks", height=80,
                         placeholder="folder:/data/line3/verdicts\ncsv:/data/line3/verdicts.csv\n"
                                     "webhook:http://mes.local/inspection\nmqtt://127.0.0.1:1883/line3/verdicts",
                         help="folder:DIR writes each frame's overlay and one JSON line; csv:FILE a row; webhook:URL "
                              "POSTs the JSON; mqtt://HOST:PORT/TOPIC publishes it. A sink that fails is retried "
                              "and never stops the scoring.")
    exported = st.text_input("Exported folder (optional)", key="live_exported",
                             help="A folder made by `inspection export` from this model: scored by onnxruntime or "
                                  "OpenVINO instead of torch.")
    start = st.form_submit_button("Start", type="primary", icon=":material/play_arrow:", disabled=running)
if start:
    with page.user_errors():
        request = live_view.LiveRequest(model_path=str(entry.path), source=source,
                                        sinks=live_view.sink_lines(sinks), every=every, exported=exported)
        live_view.LIVE.start(request, scorer=None if exported.strip() else caches.model_of(entry))
        st.rerun()


@st.fragment(run_every=1.0)
def live_panel() -> None:
    """The running pipeline, refreshed every second without rerunning the page."""
    status = live_view.LIVE.status()
    if status is None:
        st.caption("Type a source and press **Start**. The model is the one chosen in the sidebar.")
        return
    title_column, stop_column = st.columns([4, 1])
    state = "running" if status.running else "stopped"
    version = live_view.LIVE.version
    title_column.markdown(f"**{state}** · reading `{status.source}`" + (f" · model {version}" if version else ""))
    request = live_view.LIVE.request
    now = teach_view.version_of(entry) if request is not None and request.model_path == str(entry.path) else ""
    if status.running and version and now and now != version and not request.exported.strip():
        st.caption(f"The model has changed since this pipeline started (now {now}): stop and start it again to "
                   "score with the model as it is now.")
    if status.running and stop_column.button("Stop", key="live_stop", icon=":material/stop:"):
        live_view.LIVE.stop()
        st.rerun()
    if status.error:
        st.error(status.error, icon=":material/warning:")
    counts = st.columns(8)
    counts[0].metric("Received", status.received)
    counts[1].metric("Scored", status.scored)
    counts[2].metric("Not good", status.defects)
    counts[3].metric("Dropped", status.dropped, help="Frames that came while the model was busy: the newest is "
                                                     "scored, the ones in between are dropped.")
    counts[4].metric("Sent", status.sent, help="Messages the sinks delivered.")
    counts[5].metric("Frames/s", f"{status.frames_per_s:.1f}")
    latency = "From a frame's arrival to its verdict, over the last frames."
    counts[6].metric("p50 latency, ms", f"{status.latency_ms['p50']:.0f}", help=latency)
    counts[7].metric("p99 latency, ms", f"{status.latency_ms['p99']:.0f}", help=latency)
    picture_column, chart_column = st.columns([2, 3])
    latest = status.latest
    if latest is not None:
        record = latest.record
        regions = len(record["regions"])
        picture_column.image(latest.result.overlay(), width="stretch",
                             caption=f"{latest.frame.name}: {VERDICT_WORDS[record['verdict']]} · score "
                                     f"{score_text(record['score'])} · {regions} region(s)")
    if status.recent:
        chart_column.plotly_chart(control_chart(status.recent, status.threshold), width="stretch",
                                  key="live_chart")
    if status.sinks:
        st.dataframe(live_view.sinks_table(status), hide_index=True, width="stretch")
    if status.events:
        with st.expander("Events", expanded=False):
            st.code("\n".join(status.events[-20:]), language=None)


live_panel()
