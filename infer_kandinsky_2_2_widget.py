"""The Studio widget of infer_kandinsky_2_2: one control per parameter, built from ``PARAMETERS``.

Values are shown and returned as the strings Ikomia stores; the task checks them when it runs.
"""

from ikomia import core, dataprocess
from ikomia.utils import qtconversion
from PyQt6.QtWidgets import QCheckBox, QGridLayout, QLabel, QLineEdit, QWidget

from .infer_kandinsky_2_2_process import InferKandinsky22Param
from .kandinsky22_engine.parameters import PARAMETERS, TRUE_WORDS


class InferKandinsky22Widget(core.CWorkflowTaskWidget):
    """Edits the task's parameters; Apply copies every control into them, then emits Apply."""

    def __init__(self, param: InferKandinsky22Param | None, parent: QWidget | None) -> None:
        core.CWorkflowTaskWidget.__init__(self, parent)
        self.parameters = param if param is not None else InferKandinsky22Param()
        self.grid_layout = QGridLayout()
        self.controls: dict[str, QLineEdit | QCheckBox] = {}
        for row, parameter in enumerate(PARAMETERS):
            value = self.parameters.values[parameter.name]
            tooltip = f"{parameter.help} Accepted: {parameter.accepted()}."
            if parameter.type is bool:
                control = QCheckBox(parameter.label)
                control.setChecked(value.strip().lower() in TRUE_WORDS)
                self.grid_layout.addWidget(control, row, 0, 1, 2)
            else:
                label = QLabel(parameter.label)
                label.setToolTip(tooltip)
                control = QLineEdit(value)
                self.grid_layout.addWidget(label, row, 0)
                self.grid_layout.addWidget(control, row, 1)
            control.setToolTip(tooltip)
            self.controls[parameter.name] = control
        self.set_layout(qtconversion.PyQtToQt(self.grid_layout))

    def control_values(self) -> dict[str, str]:
        """What the controls show, as the strings the parameters keep."""
        return {
            name: str(control.isChecked()) if isinstance(control, QCheckBox) else control.text()
            for name, control in self.controls.items()
        }

    def on_apply(self) -> None:
        self.parameters.set_values(self.control_values())
        self.emit_apply(self.parameters)


class InferKandinsky22WidgetFactory(dataprocess.CWidgetFactory):
    """Builds the widget for Studio."""

    def __init__(self) -> None:
        dataprocess.CWidgetFactory.__init__(self)
        self.name = "infer_kandinsky_2_2"

    def create(self, param: InferKandinsky22Param | None) -> InferKandinsky22Widget:
        return InferKandinsky22Widget(param, None)
