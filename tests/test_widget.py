"""The Studio widget, built offscreen through the plugin's widget factory."""

import os

import pytest

from infer_kandinsky_2_2.kandinsky22_engine.parameters import PARAMETERS, Settings

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PyQt6.QtWidgets")


@pytest.fixture(scope="module")
def application():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture
def plugin():
    from infer_kandinsky_2_2.infer_kandinsky_2_2 import IkomiaPlugin

    return IkomiaPlugin()


def test_the_widget_shows_the_parameters_it_is_given_and_apply_returns_the_controls(application, plugin):
    parameters = plugin.get_param_factory().create()
    given = {**Settings().to_strings(), "prompt": "a red cat", "height": "512", "cuda": "False"}
    parameters.set_values(given)
    widget = plugin.get_widget_factory().create(parameters)
    assert widget.control_values() == given
    assert list(widget.controls) == [parameter.name for parameter in PARAMETERS]
    widget.controls["seed"].setText("42")
    widget.controls["cuda"].setChecked(True)
    applied = []
    widget.emit_apply = lambda emitted: applied.append(emitted.get_values())
    widget.on_apply()
    assert applied == [{**given, "seed": "42", "cuda": "True"}], "Apply must copy the controls before emitting"
    assert parameters.get_values() == applied[0]
