"""The Studio widget of infer_kandinsky_2_2, built from the parameter definitions.

Each parameter of ``PARAMETERS`` gets the control its definition calls for (multi-line text,
model combo with a folder picker, bounded spin box, seed field, check box), labelled, limited to
its accepted range and explained by its help text, inside a box per group. A new parameter shows up
here without widget code.

Apply hands back every value the widget was opened with, as it was, unless the user edited its control: a
value set from Python that a control cannot show as it is (a refused height, more decimals than it shows) is
shown as near as the control can, and kept.
"""

import math
from collections.abc import Callable
from itertools import groupby

import torch
from ikomia import core, dataprocess
from ikomia.utils import qtconversion
from PyQt6.QtCore import QRegularExpression, Qt, pyqtBoundSignal
from PyQt6.QtGui import QRegularExpressionValidator, QValidator
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .infer_kandinsky_2_2_process import InferKandinsky22Param
from .kandinsky22_engine.errors import SettingsError
from .kandinsky22_engine.modes import input_names
from .kandinsky22_engine.parameters import PARAMETERS, RANDOM_SEED, TRUE_WORDS, Parameter

NO_CUDA_TOOLTIP = "CUDA is not available on this machine: the task runs on the CPU in float32."
# The largest value a spin box holds (a C int): the upper end of a whole number that has no maximum.
SPIN_BOX_MAXIMUM = 2**31 - 1
PROMPT_LINES = 3


class MultipleSpinBox(QSpinBox):
    """A spin box that accepts only multiples of its step, and rounds what is typed to the nearest."""

    def validate(self, text: str, position: int) -> tuple[QValidator.State, str, int]:
        state, text, position = super().validate(text, position)
        if state == QValidator.State.Acceptable and self.valueFromText(text) % self.singleStep():
            state = QValidator.State.Intermediate
        return state, text, position

    def fixup(self, text: str) -> str:
        try:
            value = round(int(text) / self.singleStep()) * self.singleStep()
        except ValueError:
            return super().fixup(text)
        return str(min(max(value, self.minimum()), self.maximum()))


# The decimals a float control accepts; it shows as few as a value needs.
FLOAT_DECIMALS = 6


class PreciseSpinBox(QDoubleSpinBox):
    """A spin box of ``FLOAT_DECIMALS`` decimals that shows a value with the decimals it needs: 0.125, 7.255, 4.0."""

    def textFromValue(self, value: float) -> str:
        text = super().textFromValue(value)
        point = self.locale().decimalPoint()
        if point not in text:
            return text
        whole, decimals = text.split(point, 1)
        return f"{whole}{point}{decimals.rstrip('0') or '0'}"


class Control:
    """One parameter's editor: the widget to place, how to read what it shows as Ikomia's string, what it does
    when the mode changes (the model lists offer only the known repos that fit the mode), the signals its edits
    emit, and the value it was opened with, which ``value`` gives back until one of them fires (``watch``)."""

    def __init__(
        self,
        widget: QWidget,
        read: Callable[[], str],
        show_mode: Callable[[str], None] = lambda mode: None,
        edited: pyqtBoundSignal | None = None,
        changes: tuple[pyqtBoundSignal, ...] = (),
    ) -> None:
        self.widget = widget
        self.read = read
        self.show_mode = show_mode
        self.edited = edited
        self.changes = (edited,) if edited is not None and not changes else changes
        self.given: str | None = None

    def watch(self, given: str) -> None:
        """Give back ``given`` from now on, until the control is edited."""
        self.given = given
        for signal in self.changes:
            signal.connect(self._edited)

    def _edited(self, *arguments: object) -> None:
        self.given = None

    def value(self) -> str:
        """The parameter's value: the one the widget was opened with, unless the control was edited since."""
        return self.read() if self.given is None else self.given


def text_control(parameter: Parameter, value: str) -> Control:
    if parameter.choices:
        combo = QComboBox()
        combo.addItems(list(parameter.choices))
        for choice, meaning in parameter.choice_help:
            combo.setItemData(parameter.choices.index(choice), meaning, Qt.ItemDataRole.ToolTipRole)
        # Shown as the task reads it (surrounding spaces do not count), or the default where it reads none.
        combo.setCurrentText(value.strip() if value.strip() in parameter.choices else str(parameter.default))
        # ``activated``: picking the choice shown counts as an edit too, which keeps it over a value it stood for.
        return Control(combo, combo.currentText, changes=(combo.currentTextChanged, combo.activated))
    if parameter.suggestions:
        return model_control(parameter, value)
    if parameter.multiline:
        editor = QPlainTextEdit(value)
        editor.setTabChangesFocus(True)
        editor.setFixedHeight(editor.fontMetrics().lineSpacing() * PROMPT_LINES + 12)
        return Control(editor, editor.toPlainText, changes=(editor.textChanged,))
    editor = QLineEdit(value)
    if parameter.pattern:
        editor.setValidator(QRegularExpressionValidator(QRegularExpression(parameter.pattern)))
    if parameter.accepts_folder or parameter.accepts_file:
        return Control(
            folder_row(parameter, editor, editor.setText, editor.text), editor.text, edited=editor.textChanged
        )
    return Control(editor, editor.text, edited=editor.textChanged)


def folder_row(
    parameter: Parameter,
    editor: QWidget,
    set_text: Callable[[str], None],
    text: Callable[[], str] = str,
) -> QWidget:
    """``editor`` in a row, followed by a button that picks a local folder into it when the parameter accepts
    one, or adds picked .safetensors files to the list it holds (``text``) when it accepts files."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(editor, 1)
    if parameter.accepts_file:
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip(f"Add local .safetensors files to {parameter.label.lower()}")

        def pick_files() -> None:
            files, _ = QFileDialog.getOpenFileNames(row, f"{parameter.label}: local files", "", "*.safetensors")
            if files:
                set_text(", ".join(part for part in (text().strip(), *files) if part))

        browse.clicked.connect(pick_files)
        layout.addWidget(browse)
    if parameter.accepts_folder:
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip(f"Pick a local folder for {parameter.label.lower()}")

        def pick_folder() -> None:
            folder = QFileDialog.getExistingDirectory(row, f"{parameter.label}: local folder")
            if folder:
                set_text(folder)

        browse.clicked.connect(pick_folder)
        layout.addWidget(browse)
    return row


def model_control(parameter: Parameter, value: str) -> Control:
    """Editable list of the known repos that fit the mode plus the current value, and a button to pick a local
    folder. The default shows as the mode's own repo, which it stands for (say the inpainting decoder in inpaint).
    When the mode changes, a known repo that does not fit the new mode gives way to the mode's own; any other
    value is kept, and so is the value the widget opens with."""
    combo = QComboBox()
    combo.setEditable(True)
    combo.addItem(value)
    combo.setCurrentText(value)
    modes: list[str] = []

    def show_mode(mode: str) -> None:
        fitting = parameter.suggestions_in(mode)
        current = combo.currentText()
        # The default stands for the mode's own repo (the engine's decoder_model_name), so it shows as that one.
        changed = (bool(modes) and modes[-1] != mode) or current == parameter.default
        shown = fitting[0] if changed and current in parameter.suggestions and current not in fitting else current
        modes.append(mode)
        combo.clear()
        combo.addItems(list(dict.fromkeys([*fitting, shown])))
        combo.setCurrentText(shown)

    return Control(
        folder_row(parameter, combo, combo.setCurrentText),
        combo.currentText,
        show_mode,
        changes=(combo.currentTextChanged,),
    )


def shown_number(parameter: Parameter, value: str) -> float:
    """The number a control shows for ``value``.

    A value set from Python that the task would refuse (say a height of 100, or steps of 1e300) is shown
    as the nearest value the control can hold, or as the default when it is not a finite number. A whole number
    without a maximum is held up to ``SPIN_BOX_MAXIMUM``.
    """
    try:
        return parameter.parse(value)
    except SettingsError:
        pass
    try:
        number = float(value)
    except ValueError:
        return parameter.default
    if not math.isfinite(number):
        return parameter.default
    return min(max(number, parameter.minimum), upper_end(parameter))


def upper_end(parameter: Parameter) -> float:
    """The largest value the parameter's control takes: its maximum, or ``SPIN_BOX_MAXIMUM`` when it has none."""
    return SPIN_BOX_MAXIMUM if parameter.maximum is None else parameter.maximum


def help_text(parameter: Parameter) -> str:
    return f"{parameter.help} Accepted: {parameter.accepted()}."


def integer_control(parameter: Parameter, value: str) -> Control:
    spin = MultipleSpinBox() if parameter.multiple_of else QSpinBox()
    spin.setRange(int(parameter.minimum), int(upper_end(parameter)))
    spin.setSingleStep(int(parameter.step))
    spin.setValue(round(shown_number(parameter, value) / parameter.step) * int(parameter.step))
    return Control(spin, lambda: str(spin.value()), changes=(spin.valueChanged,))


def float_control(parameter: Parameter, value: str) -> Control:
    spin = PreciseSpinBox()
    spin.setDecimals(FLOAT_DECIMALS)
    spin.setRange(parameter.minimum, parameter.maximum)
    spin.setSingleStep(parameter.step)
    spin.setValue(shown_number(parameter, value))
    return Control(spin, lambda: str(spin.value()), changes=(spin.valueChanged,))


def bool_control(parameter: Parameter, value: str) -> Control:
    check = QCheckBox()
    check.setChecked(value.strip().lower() in TRUE_WORDS)
    if parameter.name == "cuda" and not torch.cuda.is_available():
        check.setEnabled(False)
        check.setToolTip(NO_CUDA_TOOLTIP)
    return Control(check, lambda: str(check.isChecked()), changes=(check.toggled,))


def seed_control(parameter: Parameter, value: str, last_seed: Callable[[], int | None]) -> Control:
    """A seed field, a "Random" box (-1) and a button that takes the seed of the task's last run."""
    field = QLineEdit()
    field.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{1,19}")))
    field.setPlaceholderText("random")
    random = QCheckBox("Random")
    reuse = QPushButton("Reuse last seed")
    reuse.setToolTip("Use the seed of the task's last run, as its metadata output reports it")
    seed = int(shown_number(parameter, value))
    random.setChecked(seed == RANDOM_SEED)
    field.setText("" if seed == RANDOM_SEED else str(seed))
    field.setEnabled(seed != RANDOM_SEED)
    random.toggled.connect(lambda checked: field.setEnabled(not checked))

    def reuse_last_seed() -> None:
        seed = last_seed()
        if seed is not None:
            random.setChecked(False)
            field.setText(str(seed))

    reuse.clicked.connect(reuse_last_seed)
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(field, 1)
    layout.addWidget(random)
    layout.addWidget(reuse)

    def read() -> str:
        return str(RANDOM_SEED) if random.isChecked() or not field.text() else field.text()

    return Control(row, read, changes=(field.textChanged, random.toggled))


def make_control(parameter: Parameter, value: str, last_seed: Callable[[], int | None]) -> Control:
    """The control the parameter's definition calls for, showing ``value``."""
    if parameter.name == "seed":
        control = seed_control(parameter, value, last_seed)
    elif parameter.type is bool:
        control = bool_control(parameter, value)
    elif parameter.type is int:
        control = integer_control(parameter, value)
    elif parameter.type is float:
        control = float_control(parameter, value)
    else:
        control = text_control(parameter, value)
    if not control.widget.toolTip():
        control.widget.setToolTip(help_text(parameter))
    return control


class InferKandinsky22Widget(core.CWorkflowTaskWidget):
    """Edits the task's parameters; Apply copies every control into them, then emits Apply."""

    def __init__(self, param: InferKandinsky22Param | None, parent: QWidget | None) -> None:
        core.CWorkflowTaskWidget.__init__(self, parent)
        self.parameters = param if param is not None else InferKandinsky22Param()
        self.main_layout = QVBoxLayout()
        self.controls: dict[str, Control] = {}
        self.labels: dict[str, QLabel] = {}
        self.groups: dict[str, QGroupBox] = {}
        self.shown: tuple[str, ...] = ()
        for group, members in groupby(PARAMETERS, key=lambda parameter: parameter.group):
            box = QGroupBox(group)
            QFormLayout(box)
            for parameter in members:
                value = self.parameters.values[parameter.name]
                control = make_control(parameter, value, lambda: self.parameters.last_seed)
                label = QLabel(parameter.label, box)
                label.setToolTip(help_text(parameter))
                control.widget.setParent(box)
                self.controls[parameter.name], self.labels[parameter.name] = control, label
            self.groups[group] = box
            self.main_layout.addWidget(box)
        self.inputs_caption = QLabel("Inputs", self.groups[PARAMETERS[0].group])
        self.inputs_label = QLabel(self.groups[PARAMETERS[0].group])
        self.inputs_label.setWordWrap(True)
        self.inputs_caption.setToolTip("The task's inputs in this mode, by index")
        self.main_layout.addStretch(1)
        self._align_labels()
        self.controls["mode"].widget.currentTextChanged.connect(self.show_mode)
        self.controls["mix_images"].widget.valueChanged.connect(self.show_inputs)
        self.controls["depth_model"].edited.connect(self.show_inputs)
        self.controls["cuda"].widget.toggled.connect(self.enable_cuda_controls)
        self.show_mode()
        self.enable_cuda_controls()
        for name, control in self.controls.items():
            control.watch(self.parameters.values[name])
        self.set_layout(qtconversion.PyQtToQt(self.main_layout))

    def show_mode(self) -> None:
        """Show only the controls that the chosen mode uses, the inputs it reads, and the known models that fit it."""
        mode = self.controls["mode"].read()
        for control in self.controls.values():
            control.show_mode(mode)
        shown = tuple(parameter.name for parameter in PARAMETERS if parameter.used_in(mode))
        if shown != self.shown:
            self._arrange_rows(shown)
        self.show_inputs()

    def show_inputs(self) -> None:
        """List the inputs the task offers with the mode, mix_images and depth_model the controls show."""
        names = input_names(
            self.controls["mode"].read(),
            int(self.controls["mix_images"].read()),
            self.controls["depth_model"].read().strip(),
        )
        self.inputs_label.setText(
            ", ".join(f"{index}: {name}" for index, name in enumerate(names)) or "none: the prompt is enough"
        )

    def _arrange_rows(self, shown: tuple[str, ...]) -> None:
        """Put the rows of the ``shown`` parameters in their forms, in order, and hide the others.

        Rows are taken out of their form rather than hidden: a hidden QFormLayout row still takes space
        in Qt 6.2, which has no setRowVisible.
        """
        for group, box in self.groups.items():
            form = box.layout()
            while form.rowCount():
                form.takeRow(0)
            members = [parameter.name for parameter in PARAMETERS if parameter.group == group]
            for name in members:
                label, control = self.labels[name], self.controls[name].widget
                if name in shown:
                    form.addRow(label, control)
                label.setVisible(name in shown)
                control.setVisible(name in shown)
            box.setVisible(any(name in shown for name in members))
        self.groups[PARAMETERS[0].group].layout().addRow(self.inputs_caption, self.inputs_label)
        self.shown = shown

    def enable_cuda_controls(self) -> None:
        """Let the controls that only a CUDA run reads be edited only while cuda is on."""
        on_cuda = self.controls["cuda"].widget.isChecked()
        for parameter in PARAMETERS:
            if parameter.cuda_only:
                self.controls[parameter.name].widget.setEnabled(on_cuda)
                self.label_of(parameter.name).setEnabled(on_cuda)

    def _align_labels(self) -> None:
        """Give every group's labels one width, so that the controls line up from box to box."""
        labels = [self.label_of(name) for name in self.controls] + [self.inputs_caption]
        width = max(label.sizeHint().width() for label in labels)
        for label in labels:
            label.setMinimumWidth(width)

    def label_of(self, name: str) -> QLabel:
        """The label shown beside the control of parameter ``name``."""
        return self.labels[name]

    def control_values(self) -> dict[str, str]:
        """The parameters' values: what the edited controls show, as the strings the parameters keep, and the
        values the widget was opened with for the others."""
        return {name: control.value() for name, control in self.controls.items()}

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
