"""The Studio widget, built offscreen through the plugin's widget factory."""

import os

import pytest
import torch

from helpers import workflow_with
from infer_kandinsky_2_2.kandinsky22_engine.modes import (
    DEFAULT_CONTROLNET_DECODER,
    DEFAULT_DECODER,
    DEFAULT_INPAINT_DECODER,
    MODES,
)
from infer_kandinsky_2_2.kandinsky22_engine.parameters import (
    KNOWN_PRIORS,
    PARAMETERS,
    Settings,
)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PyQt6.QtWidgets")
QValidator = pytest.importorskip("PyQt6.QtGui").QValidator
Qt = pytest.importorskip("PyQt6.QtCore").Qt

NON_DEFAULT = {
    "mode": "mix",
    "model_name": "/models/my-decoder",
    "prior_model_name": "kandinsky-community/kandinsky-2-2-prior",
    "depth_model": "/models/my-depth-model",
    "lora": "/loras/style.safetensors, owner/detail@v2",
    "lora_scale": "0.8, -0.25",
    "prompt": "a red cat\non a blue chair",
    "negative_prompt": "",
    "negative_prior_prompt": "ugly\ndeformed",
    "prior_num_inference_steps": "2",
    "prior_guidance_scale": "7.5",
    "prior_strength": "0.6",
    "num_inference_steps": "1000",
    "guidance_scale": "20.0",
    "scheduler": "DPM++ 2M Karras",
    "strength": "0.75",
    "height": "2048",
    "width": "64",
    "num_images": "3",
    "seed": "123456789012345678",
    "mix_images": "3",
    "mix_weights": "0.2, 0.3, 0.1 0.4",
    "mask_mode": "keep",
    "paste_back": "True",
    "outpaint_top": "64",
    "outpaint_bottom": "7",
    "outpaint_left": "0",
    "outpaint_right": "1984",
    "outpaint_overlap": "256",
    "cuda": "False",
    "cuda_device": "3",
    "memory_mode": "model_offload",
    "cuda_graphs": "True",
    "compile_unet": "reduce-overhead",
}


@pytest.fixture(scope="module")
def application():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture
def plugin(application):
    from infer_kandinsky_2_2.infer_kandinsky_2_2 import IkomiaPlugin

    return IkomiaPlugin()


def open_widget(plugin, values: dict[str, str] | None = None):
    """The widget Studio would open on parameters set from Python to ``values``."""
    parameters = plugin.get_param_factory().create()
    if values is not None:
        parameters.set_values(values)
    return parameters, plugin.get_widget_factory().create(parameters)


def inner(widget, name: str, kind: type):
    control = widget.controls[name].widget
    return control if isinstance(control, kind) else control.findChild(kind)


def test_every_parameter_has_a_labelled_control_with_its_help_in_a_box_of_its_group(plugin):
    _, widget = open_widget(plugin)
    assert list(widget.controls) == [parameter.name for parameter in PARAMETERS]
    for parameter in PARAMETERS:
        label = widget.label_of(parameter.name)
        assert label.text() == parameter.label
        assert parameter.help in label.toolTip()
        assert widget.controls[parameter.name].widget.parentWidget().title() == parameter.group


def test_defaults_are_shown_with_the_kind_of_control_and_the_range_of_each_parameter(plugin):
    _, widget = open_widget(plugin)
    assert widget.control_values() == Settings().to_strings()
    assert isinstance(widget.controls["prompt"].widget, QtWidgets.QPlainTextEdit)
    assert isinstance(widget.controls["negative_prompt"].widget, QtWidgets.QPlainTextEdit)
    decoders = inner(widget, "model_name", QtWidgets.QComboBox)
    assert decoders.isEditable()
    assert [decoders.itemText(index) for index in range(decoders.count())] == [DEFAULT_DECODER]
    priors = inner(widget, "prior_model_name", QtWidgets.QComboBox)
    assert [priors.itemText(index) for index in range(priors.count())] == list(KNOWN_PRIORS)
    assert inner(widget, "model_name", QtWidgets.QToolButton) is not None
    ranges = {
        name: (spin.minimum(), spin.maximum(), spin.singleStep())
        for name in ("prior_num_inference_steps", "num_inference_steps", "height", "width", "cuda_device")
        for spin in [widget.controls[name].widget]
    }
    assert ranges == {
        "prior_num_inference_steps": (2, 1000, 1),
        "num_inference_steps": (1, 1000, 1),
        "height": (64, 2048, 64),
        "width": (64, 2048, 64),
        # No maximum: how many GPUs there are is known only when the task runs, which refuses an index past them.
        "cuda_device": (0, 2**31 - 1, 1),
    }
    for name in ("prior_guidance_scale", "guidance_scale"):
        spin = widget.controls[name].widget
        assert (spin.minimum(), spin.maximum(), spin.singleStep()) == (1.0, 20.0, 0.5)
    assert inner(widget, "seed", QtWidgets.QCheckBox).isChecked()
    assert not inner(widget, "seed", QtWidgets.QLineEdit).isEnabled()


def test_parameters_set_from_python_are_shown_exactly(plugin):
    _, widget = open_widget(plugin, NON_DEFAULT)
    assert widget.control_values() == NON_DEFAULT
    assert inner(widget, "model_name", QtWidgets.QComboBox).currentText() == "/models/my-decoder"
    assert not inner(widget, "seed", QtWidgets.QCheckBox).isChecked()


def test_apply_copies_every_control_into_the_parameters_before_emitting(plugin):
    parameters, widget = open_widget(plugin)
    widgets = {name: widget.controls[name].widget for name in widget.controls}
    inner(widget, "model_name", QtWidgets.QComboBox).setCurrentText("/models/my-decoder")
    inner(widget, "prior_model_name", QtWidgets.QComboBox).setCurrentText("someone/prior")
    inner(widget, "depth_model", QtWidgets.QLineEdit).setText("someone/depth")
    inner(widget, "lora", QtWidgets.QLineEdit).setText("/loras/style.safetensors")
    widgets["lora_scale"].setText("0.5")
    widgets["prompt"].setPlainText("a red cat\non a blue chair")
    widgets["negative_prompt"].setPlainText("")
    widgets["negative_prior_prompt"].setPlainText("ugly")
    widgets["prior_num_inference_steps"].setValue(2)
    widgets["prior_guidance_scale"].setValue(7.5)
    widgets["prior_strength"].setValue(0.6)
    widgets["num_inference_steps"].setValue(30)
    widgets["guidance_scale"].setValue(4.0)
    widgets["scheduler"].setCurrentText("UniPC")
    widgets["mode"].setCurrentText("img2img")
    widgets["num_images"].setValue(2)
    widgets["strength"].setValue(0.55)
    widgets["mix_images"].setValue(5)
    widgets["mix_weights"].setText("1 2 3 4 5 6")
    widgets["mask_mode"].setCurrentText("keep")
    widgets["paste_back"].setChecked(True)
    widgets["outpaint_top"].setValue(16)
    widgets["outpaint_bottom"].setValue(24)
    widgets["outpaint_left"].setValue(0)
    widgets["outpaint_right"].setValue(200)
    widgets["outpaint_overlap"].setValue(8)
    widgets["height"].setValue(512)
    widgets["width"].setValue(1024)
    inner(widget, "seed", QtWidgets.QCheckBox).setChecked(False)
    inner(widget, "seed", QtWidgets.QLineEdit).setText("42")
    widgets["cuda"].setChecked(not widgets["cuda"].isChecked())
    widgets["cuda_device"].setValue(1)
    widgets["memory_mode"].setCurrentText("sequential_offload")
    widgets["cuda_graphs"].setChecked(True)
    widgets["compile_unet"].setCurrentText("default")
    emitted = []
    widget.emit_apply = lambda applied: emitted.append(dict(applied.get_values()))
    widget.on_apply()
    expected = {
        "mode": "img2img",
        "model_name": "/models/my-decoder",
        "prior_model_name": "someone/prior",
        "depth_model": "someone/depth",
        "lora": "/loras/style.safetensors",
        "lora_scale": "0.5",
        "prompt": "a red cat\non a blue chair",
        "negative_prompt": "",
        "negative_prior_prompt": "ugly",
        "prior_num_inference_steps": "2",
        "prior_guidance_scale": "7.5",
        "prior_strength": "0.6",
        "num_inference_steps": "30",
        "guidance_scale": "4.0",
        "scheduler": "UniPC",
        "strength": "0.55",
        "height": "512",
        "width": "1024",
        "num_images": "2",
        "seed": "42",
        "mix_images": "5",
        "mix_weights": "1 2 3 4 5 6",
        "mask_mode": "keep",
        "paste_back": "True",
        "outpaint_top": "16",
        "outpaint_bottom": "24",
        "outpaint_left": "0",
        "outpaint_right": "200",
        "outpaint_overlap": "8",
        "cuda": str(widgets["cuda"].isChecked()),
        "cuda_device": "1",
        "memory_mode": "sequential_offload",
        "cuda_graphs": "True",
        "compile_unet": "default",
    }
    assert emitted == [expected]
    assert parameters.get_values() == expected
    assert Settings.from_strings(expected).seed == 42


def test_values_outside_the_accepted_range_cannot_be_entered(plugin):
    _, widget = open_widget(plugin)
    height = widget.controls["height"].widget
    height.setValue(5000)
    assert height.value() == 2048
    assert height.validate("100", 3)[0] == QValidator.State.Intermediate
    assert height.fixup("100") == "128"
    assert height.fixup("9999") == "2048"
    steps = widget.controls["prior_num_inference_steps"].widget
    steps.setValue(1)
    assert steps.value() == 2
    guidance = widget.controls["guidance_scale"].widget
    guidance.setValue(0.2)
    assert guidance.value() == 1.0
    seed = inner(widget, "seed", QtWidgets.QLineEdit)
    for text in ("-5", "abc", "1.5", "12345678901234567890"):
        assert seed.validator().validate(text, len(text))[0] == QValidator.State.Invalid, text
    weights = widget.controls["mix_weights"].widget
    for text in ("__import__('os')", "-1", "0.5 x"):
        assert weights.validator().validate(text, len(text))[0] == QValidator.State.Invalid, text
    assert weights.validator().validate("0.5, 0.25 2.5e1", 3)[0] == QValidator.State.Acceptable
    mode = widget.controls["mode"].widget
    assert [mode.itemText(index) for index in range(mode.count())] == list(MODES)
    assert not mode.isEditable()


def test_a_refused_value_set_from_python_is_shown_as_the_nearest_accepted_one_and_kept_until_edited(plugin):
    given = {
        "height": "100",
        "num_inference_steps": "5000",
        "guidance_scale": "nan",
        "mode": "foo",
        "cuda": "maybe",
        "cuda_device": "-2",
    }
    parameters, widget = open_widget(plugin, given)
    shown = {name: widget.controls[name].read() for name in given}
    assert shown == {
        "height": "128",
        "num_inference_steps": "1000",
        "guidance_scale": "1.0",
        "mode": "text2img",
        "cuda": "False",
        "cuda_device": "0",
    }
    # Apply changes nothing the user did not edit: the task refuses the values when it runs, naming each.
    widget.on_apply()
    assert {name: parameters.get_values()[name] for name in given} == given
    widget.controls["height"].widget.setValue(192)
    assert widget.control_values()["height"] == "192"
    huge = {"width": "1e300", "prior_num_inference_steps": "-1e300", "seed": "1e300", "cuda_device": "1e300"}
    _, widget = open_widget(plugin, huge)
    shown = {name: widget.controls[name].read() for name in huge}
    assert shown == {
        "width": "2048",
        "prior_num_inference_steps": "2",
        "seed": str(2**63 - 1),
        "cuda_device": str(2**31 - 1),
    }


@pytest.mark.parametrize("name", ["strength", "guidance_scale", "prior_guidance_scale", "prior_strength"])
def test_a_float_keeps_every_decimal_it_was_given_and_takes_six(plugin, name):
    value = {
        "strength": "0.125",
        "guidance_scale": "7.255",
        "prior_guidance_scale": "4.125",
        "prior_strength": "0.3333333",
    }[name]
    parameters, widget = open_widget(plugin, {name: value})
    spin = widget.controls[name].widget
    widget.on_apply()
    assert parameters.get_values()[name] == value
    # Shown with the decimals it needs (six at most), and six may be typed.
    assert spin.text() == {"0.3333333": "0.333333"}.get(value, value)
    typed = "0.654321" if "strength" in name else "1.654321"
    spin.setValue(float(typed))
    assert spin.text() == typed and widget.control_values()[name] == typed


def test_the_cuda_box_is_disabled_and_says_why_without_cuda(plugin, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, widget = open_widget(plugin, {"cuda": "False"})
    cuda = widget.controls["cuda"].widget
    assert not cuda.isEnabled()
    assert not cuda.isChecked()
    assert cuda.toolTip() == "CUDA is not available on this machine: the task runs on the CPU in float32."


def test_the_cuda_box_is_enabled_where_cuda_is(plugin, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _, widget = open_widget(plugin, {"cuda": "True"})
    cuda = widget.controls["cuda"].widget
    assert cuda.isEnabled()
    assert cuda.isChecked()


def test_the_gpu_index_memory_and_compile_controls_can_be_edited_only_while_cuda_is_on(plugin, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _, widget = open_widget(plugin, {"cuda": "False"})
    names = ("cuda_device", "memory_mode", "cuda_graphs", "compile_unet")
    cuda_only = [widget.controls[name].widget for name in names]
    assert [control.isEnabled() for control in cuda_only] == [False] * 4
    assert not widget.label_of("compile_unet").isEnabled() and not widget.label_of("cuda_device").isEnabled()
    widget.controls["cuda"].widget.setChecked(True)
    assert [control.isEnabled() for control in cuda_only] == [True] * 4
    assert [name for name, control in widget.controls.items() if not control.widget.isEnabled()] == []


def test_reuse_last_seed_takes_the_seed_of_the_last_run(plugin, tiny_strings):
    workflow, task = workflow_with({**tiny_strings, "seed": "-1"})
    widget = plugin.get_widget_factory().create(task.get_param_object())
    reuse = inner(widget, "seed", QtWidgets.QPushButton)
    reuse.click()
    assert widget.control_values()["seed"] == "-1", "no run yet: nothing to reuse"
    workflow.run()
    reuse.click()
    assert widget.control_values()["seed"] == str(task.get_output(1).data["seed"])
    assert not inner(widget, "seed", QtWidgets.QCheckBox).isChecked()


OUTPAINT_ONLY = ("outpaint_top", "outpaint_bottom", "outpaint_left", "outpaint_right", "outpaint_overlap")


@pytest.mark.parametrize(
    ("mode", "only_there", "inputs"),
    [
        ("text2img", set(), "none: the prompt is enough"),
        ("img2img", {"strength"}, "0: image"),
        ("inpaint", {"mask_mode", "paste_back"}, "0: image, 1: mask drawing, 2: mask"),
        ("outpaint", {"paste_back", *OUTPAINT_ONLY}, "0: image"),
        ("controlnet_depth", {"depth_model"}, "0: depth map"),
        ("controlnet_img2img", {"strength", "prior_strength", "depth_model"}, "0: image, 1: depth map"),
        ("mix", {"mix_images", "mix_weights"}, "0: image 1, 1: image 2"),
    ],
)
def test_the_mode_selector_shows_only_the_controls_and_inputs_of_the_mode(plugin, mode, only_there, inputs):
    _, widget = open_widget(plugin, {"mode": "mix" if mode == "img2img" else "img2img"})
    widget.controls["mode"].widget.setCurrentText(mode)
    mode_specific = {
        "strength",
        "prior_strength",
        "mix_images",
        "mix_weights",
        "depth_model",
        "mask_mode",
        "paste_back",
        *OUTPAINT_ONLY,
    }
    shown = {name for name, control in widget.controls.items() if not control.widget.isHidden()}
    assert shown == set(widget.controls) - mode_specific | only_there
    # Hidden controls leave their forms, so that no empty row keeps its space.
    in_forms = {
        name
        for name, control in widget.controls.items()
        if control.widget.parentWidget().layout().indexOf(control.widget) >= 0
    }
    assert in_forms == shown
    assert all(widget.label_of(name).isHidden() == (name not in shown) for name in widget.controls)
    assert widget.groups["Mix"].isHidden() == (mode != "mix")
    assert widget.groups["Inpaint and outpaint"].isHidden() == (mode not in ("inpaint", "outpaint"))
    assert widget.groups["Outpaint"].isHidden() == (mode != "outpaint")
    assert widget.inputs_label.text() == inputs


def test_the_listed_mix_inputs_follow_mix_images(plugin):
    _, widget = open_widget(plugin, {"mode": "mix", "mix_images": "3"})
    assert widget.inputs_label.text() == "0: image 1, 1: image 2, 2: image 3"
    widget.controls["mix_images"].widget.setValue(4)
    assert widget.inputs_label.text().endswith("3: image 4")


def test_the_listed_inputs_follow_depth_model_which_takes_a_folder(plugin, monkeypatch):
    _, widget = open_widget(plugin, {"mode": "controlnet_depth"})
    depth_model = inner(widget, "depth_model", QtWidgets.QLineEdit)
    assert widget.inputs_label.text() == "0: depth map"
    depth_model.setText("someone/depth")
    assert widget.inputs_label.text() == "0: image"
    depth_model.setText(" ")
    assert widget.inputs_label.text() == "0: depth map"
    monkeypatch.setattr(QtWidgets.QFileDialog, "getExistingDirectory", lambda *arguments: "/models/depth")
    inner(widget, "depth_model", QtWidgets.QToolButton).click()
    assert widget.control_values()["depth_model"] == "/models/depth"
    assert widget.inputs_label.text() == "0: image"


def test_the_lora_button_adds_the_picked_files_to_the_list(plugin, monkeypatch):
    _, widget = open_widget(plugin, {"lora": "owner/style"})
    picked = ["/loras/a.safetensors", "/loras/b.safetensors"]
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileNames", lambda *arguments: (picked, "*.safetensors"))
    inner(widget, "lora", QtWidgets.QToolButton).click()
    assert widget.control_values()["lora"] == "owner/style, /loras/a.safetensors, /loras/b.safetensors"
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileNames", lambda *arguments: ([], ""))
    inner(widget, "lora", QtWidgets.QToolButton).click()
    assert widget.control_values()["lora"] == "owner/style, /loras/a.safetensors, /loras/b.safetensors"


def items(combo) -> list[str]:
    return [combo.itemText(index) for index in range(combo.count())]


def test_the_decoder_list_offers_only_the_known_repo_that_fits_the_mode_and_keeps_a_custom_one(plugin):
    _, widget = open_widget(plugin)
    decoders = inner(widget, "model_name", QtWidgets.QComboBox)
    mode = widget.controls["mode"].widget
    expected = {
        "text2img": DEFAULT_DECODER,
        "inpaint": DEFAULT_INPAINT_DECODER,
        "img2img": DEFAULT_DECODER,
        "outpaint": DEFAULT_INPAINT_DECODER,
        "controlnet_depth": DEFAULT_CONTROLNET_DECODER,
        "mix": DEFAULT_DECODER,
    }
    for name, repo in expected.items():
        mode.setCurrentText(name)
        assert (items(decoders), decoders.currentText()) == ([repo], repo), name
    decoders.setCurrentText("/models/my-inpainting-decoder")
    mode.setCurrentText("inpaint")
    assert items(decoders) == [DEFAULT_INPAINT_DECODER, "/models/my-inpainting-decoder"]
    assert widget.control_values()["model_name"] == "/models/my-inpainting-decoder"


def test_a_known_decoder_of_another_mode_set_from_python_opens_as_given_and_gives_way_to_a_new_modes(plugin):
    _, widget = open_widget(plugin, {"mode": "inpaint", "model_name": DEFAULT_CONTROLNET_DECODER})
    decoders = inner(widget, "model_name", QtWidgets.QComboBox)
    assert decoders.currentText() == widget.control_values()["model_name"] == DEFAULT_CONTROLNET_DECODER
    assert items(decoders) == [DEFAULT_INPAINT_DECODER, DEFAULT_CONTROLNET_DECODER]
    widget.controls["mode"].widget.setCurrentText("text2img")
    assert widget.control_values()["model_name"] == DEFAULT_DECODER
    # The default stands for the mode's own decoder: it shows as that one, and is kept as the default.
    _, widget = open_widget(plugin, {"mode": "inpaint"})
    assert inner(widget, "model_name", QtWidgets.QComboBox).currentText() == DEFAULT_INPAINT_DECODER
    assert widget.control_values()["model_name"] == DEFAULT_DECODER
    priors = inner(widget, "prior_model_name", QtWidgets.QComboBox)
    assert items(priors) == list(KNOWN_PRIORS)


def test_the_sampler_list_explains_each_sampler(plugin):
    from infer_kandinsky_2_2.kandinsky22_engine.schedulers import SAMPLERS

    _, widget = open_widget(plugin)
    combo = widget.controls["scheduler"].widget
    tips = {combo.itemText(index): combo.itemData(index, Qt.ItemDataRole.ToolTipRole) for index in range(combo.count())}
    assert tips["DPM++ 2M"] == SAMPLERS["DPM++ 2M"].help
    assert tips["default"].startswith("the repo's own DDPMScheduler")
    assert all(tips.values())


def test_a_choice_with_spaces_around_it_shows_as_the_task_reads_it_and_picking_it_keeps_it(plugin):
    given = {"mode": " inpaint ", "scheduler": "DDIM ", "mask_mode": " keep", "memory_mode": "model_offload "}
    parameters, widget = open_widget(plugin, given)
    shown = {name: widget.controls[name].read() for name in given}
    assert shown == {name: value.strip() for name, value in given.items()}
    assert widget.inputs_label.text() == "0: image, 1: mask drawing, 2: mask"
    widget.on_apply()
    assert {name: parameters.get_values()[name] for name in given} == given
    # A value the control cannot show (mode "foo", shown as text2img) is kept until the user picks a choice, the
    # one shown included.
    _, widget = open_widget(plugin, {"mode": "foo"})
    mode = widget.controls["mode"].widget
    mode.activated.emit(mode.currentIndex())
    assert widget.control_values()["mode"] == "text2img"
