"""Train: choose a method, its backbone and parameters (the form comes from the registry), train in the
background with live progress, evaluate on the test split and save; manage the trained models."""

from __future__ import annotations

from typing import Any

import streamlit as st

from inspection.data.protocol import PROTOCOLS, AlignmentProtocol
from inspection.features.mobilenet import RESOLUTIONS as COST_SIDES
from inspection.registry import backbones, methods
from inspection_app import caches, export_view, page, sidebar, training
from inspection_app.forms import GROUP_TITLES, FieldSpec, form_fields, resolve_form
from inspection_app.jobs import TrainingRequest
from inspection_app.library import (
    default_model_name,
    delete_model,
    models_dir,
    rename_model,
    scan_models,
    unique_model_path,
    validate_name,
)
from inspection_app.tables import EMPTY_CELL, MODEL_COLUMNS, backbone_cost_rows, resize_mode_cost_rows

page.page_setup("Train", "Fit a model on the good training images of the chosen dataset, calibrate its thresholds on "
                "held-out good images, evaluate it on the test split and save it to the models folder.")
dataset = sidebar.data_source_picker()
entries = sidebar.model_entries()


def param_widget(container: Any, spec: FieldSpec, key: str) -> Any:
    """One form widget for a declared parameter."""
    if spec.widget == "checkbox":
        return container.checkbox(spec.label, value=spec.default, help=spec.help, key=key)
    if spec.widget == "select":
        options = list(spec.options)
        describe = (lambda name: f"{name} — {backbones()[name].description}") if spec.name == "backbone" else str
        return container.selectbox(spec.label, options, index=options.index(spec.default), help=spec.help,
                                   key=key, format_func=describe)
    if spec.widget == "int":
        return container.number_input(spec.label, min_value=spec.minimum, max_value=spec.maximum,
                                      value=spec.default, step=1, help=spec.help, key=key)
    if spec.widget == "float":
        return container.number_input(spec.label, min_value=spec.minimum, max_value=spec.maximum,
                                      value=spec.default, step=spec.step, format="%g", help=spec.help, key=key)
    return container.text_input(spec.label, value=spec.default, help=spec.help, key=key, placeholder=spec.note)


def delete_control(path: str, name: str, confirmation: str, label: str, key: str) -> None:
    """A confirmation box and a Delete button that deletes `path` only when it is ticked."""
    # A new key after every delete: the confirmation starts unticked again, for the next file too.
    deletions = st.session_state.get("deletions", 0)
    confirm = st.checkbox(confirmation, key=f"{key}_confirm-{deletions}")
    if st.button(label, key=f"{key}_delete", disabled=not confirm):
        with page.user_errors():
            delete_model(path, models_dir())
            st.session_state["deletions"] = deletions + 1
            st.toast(f"Deleted {name}")
            st.rerun()


st.subheader("New model")
registered = methods()
method = page.kept_selectbox(st, "Method", list(registered), "train_method", default=training.DEFAULT_METHOD,
                             format_func=lambda name: f"{name} — {registered[name].description}",
                             help="Every registered method appears here; its parameters below come from its "
                                  "declarations.")
method_cls = registered[method]
if "backbone" in method_cls.param_set().names():
    with st.expander("What each backbone costs"):
        cost_side = st.select_slider("Input side (crop)", options=sorted({*COST_SIDES, 256}), value=224,
                                     key="cost_side")
        timed = st.toggle("Time them on this device", key="cost_timed",
                          help="One image at batch 1, median of 5 forward passes after a warm-up (a few seconds).")
        st.dataframe(backbone_cost_rows(caches.cached_backbone_costs(cost_side, timed)), hide_index=True)
        st.caption("Parameters include each network's 1000-class ImageNet head; mult-adds are the convolutions' "
                   "and linear layers' multiply-accumulates of one image, counted exactly (the MobileNet paper's "
                   "way). Feature methods run the trunk only up to their deepest layer, so they cost less.")
if dataset is None:
    st.info("Choose a dataset in the sidebar first.")
    st.stop()
if "backbone" in method_cls.param_set().names() and len(method_cls.capabilities.resize_modes) > 1 and dataset.train:
    with st.expander("What each resize mode costs on this dataset"):
        height, width = caches.image_size(dataset.train[0].path)
        timed_modes = st.toggle("Time them on this device", key="mode_cost_timed",
                                help="The backbone's forward passes for one image (every tile), median of 3.")
        st.dataframe(resize_mode_cost_rows(caches.cached_resize_mode_costs(method, height, width, timed_modes)),
                     hide_index=True)
        st.caption(f"For one {width} × {height} image (the first good training image) with {method}'s default "
                   "settings: what its backbone sees in each resize mode, the share of the image inspected, the "
                   "chosen layers' features and the backbone's time. The method's own scoring comes on top.")

with st.form(f"train-form-{method}"):
    name = st.text_input("Model name", value=default_model_name(method, dataset.category), key=f"name-{method}")
    values: dict[str, Any] = {}
    for group, specs in form_fields(method_cls).items():
        expander = st.expander(GROUP_TITLES.get(group, group.capitalize()), expanded=group in ("backbone", "method"))
        columns = expander.columns(3)
        for index, spec in enumerate(specs):
            values[spec.name] = param_widget(columns[index % 3], spec, f"param-{method}-{spec.name}")
    evaluate = st.checkbox("Evaluate on the test split after training", value=bool(dataset.test),
                           disabled=not dataset.test, key=f"evaluate-{method}",
                           help="Image AUROC, pixel AUROC, AUPRO and speed, kept in the model file.")
    protocol = st.selectbox(
        "Protocol", PROTOCOLS, key=f"protocol-{method}", format_func=lambda name: AlignmentProtocol(name).describe(),
        help="aligned: the images as captured. rotated: every image, training and test alike, turned and shifted "
             "as a part placed by hand would be (seeded; masks moved with them), to see how the method copes with "
             "parts that are not aligned. The model file records the protocol.")
    st.caption(f"Data: **{dataset.category}** — {len(dataset.train)} good training images, "
               f"{len(dataset.test)} test images. Saved to `{models_dir()}`.")
    running = training.training_running()
    submitted = st.form_submit_button("Train", type="primary", icon=":material/rocket_launch:", disabled=running,
                                      help="A training is running: wait until it has ended." if running else None)
if submitted:
    with page.user_errors():
        params = resolve_form(method_cls, values)
        display_name = validate_name(name)
        request = TrainingRequest(method, params, str(dataset.root), None,
                                  str(unique_model_path(models_dir(), display_name)), display_name,
                                  evaluate=evaluate and bool(dataset.test), protocol=protocol)
        if training.start_training(request):
            st.rerun()
training.training_monitor()  # here, right under the button that starts a training
training.wait_note()

st.divider()
st.subheader("Trained models")
if not entries:
    st.caption(f"No model in `{models_dir()}` yet.")
else:
    st.dataframe([entry.row() for entry in entries], hide_index=True, width="stretch", column_config=MODEL_COLUMNS,
                 placeholder=EMPTY_CELL)
    st.caption("Metrics measured on the test split at training time; ms / image: one preprocessed image, batch 1.")
    by_path = {str(entry.path): entry for entry in entries}
    chosen = st.selectbox("Model to rename, delete or export", list(by_path), key="manage_model",
                          format_func=lambda path: by_path[path].label)
    rename_column, delete_column = st.columns(2)
    with rename_column:
        new_name = st.text_input("New name", key="manage_new_name", placeholder=by_path[chosen].name)
        if st.button("Rename", key="manage_rename"):
            with page.user_errors():
                new_path = rename_model(chosen, new_name, models_dir())
                if st.session_state.get("model") == chosen:
                    sidebar.select_model(new_path)
                st.toast(f"Renamed to {new_name.strip()}")
                st.rerun()
    with delete_column:
        delete_control(chosen, by_path[chosen].name, "Yes, delete this model file", "Delete", "manage")
    export_view.export_control(by_path[chosen])

unusable = scan_models(models_dir())[1]
if unusable:
    st.subheader("Unusable files in the models folder")
    st.caption("These files cannot be loaded by this version; they are never offered in the model pickers.")
    st.dataframe([{"file": item.path.name, "reason": item.reason} for item in unusable], hide_index=True,
                 width="stretch")
    by_file = {str(item.path): item for item in unusable}
    chosen_file = st.selectbox("Unusable file to delete", list(by_file), key="manage_unusable",
                               format_func=lambda path: by_file[path].path.name)
    delete_control(chosen_file, by_file[chosen_file].path.name, "Yes, delete this file", "Delete file",
                   "manage_unusable")
