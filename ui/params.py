"""Parameter panel generated from a schema: one group box per channel group, a slider and a number field per channel,
per-channel and global reset, and a left/right link toggle for groups with sided channels."""

from __future__ import annotations

from PyQt5.QtCore import Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from keyface.core.rig import Schema

STEPS = 1000  # slider resolution over a channel's range


def partner(schema: Schema, name: str) -> str | None:
    """The other side's channel (``blink_left`` ↔ ``blink_right``), if the schema has it."""
    for a, b in (("_left", "_right"), ("_right", "_left")):
        if name.endswith(a):
            other = name[: -len(a)] + b
            return other if other in schema.names else None
    return None


class ChannelRow:
    def __init__(self, panel: ParameterPanel, grid: QGridLayout, row: int, channel):
        self.channel = channel
        self.label = QLabel(channel.label)
        self.label.setToolTip(channel.description)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, STEPS)
        self.slider.setObjectName(f"slider_{channel.name}")
        self.spin = QDoubleSpinBox()
        self.spin.setRange(channel.min, channel.max)
        self.spin.setDecimals(2 if channel.max - channel.min <= 10 else 1)
        self.spin.setSingleStep((channel.max - channel.min) / 100)
        self.spin.setObjectName(f"spin_{channel.name}")
        self.spin.setKeyboardTracking(False)
        reset = QToolButton()
        reset.setText("⟲")
        reset.setToolTip(f"Remove {channel.label}'s keys (back to {channel.default:g})")
        grid.addWidget(self.label, row, 0)
        grid.addWidget(self.slider, row, 1)
        grid.addWidget(self.spin, row, 2)
        grid.addWidget(reset, row, 3)
        self.slider.valueChanged.connect(lambda v: panel._edited(channel.name, self.from_slider(v), "slider"))
        self.spin.valueChanged.connect(lambda v: panel._edited(channel.name, v, "spin"))
        reset.clicked.connect(lambda: panel.resetRequested.emit(channel.name))

    def from_slider(self, v: int) -> float:
        c = self.channel
        return c.min + (c.max - c.min) * v / STEPS

    def show(self, value: float) -> None:
        c = self.channel
        for w in (self.slider, self.spin):
            w.blockSignals(True)
        self.slider.setValue(round((value - c.min) / (c.max - c.min) * STEPS))
        self.spin.setValue(value)
        for w in (self.slider, self.spin):
            w.blockSignals(False)


class ParameterPanel(QScrollArea):
    valueEdited = pyqtSignal(str, float)
    resetRequested = pyqtSignal(str)
    resetAllRequested = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.rows: dict[str, ChannelRow] = {}
        self.links: dict[str, QCheckBox] = {}
        self.schema: Schema | None = None

    def set_schema(self, schema: Schema) -> None:
        self.schema = schema
        self.rows, self.links = {}, {}
        body = QWidget()
        layout = QVBoxLayout(body)
        top = QPushButton("Reset all")
        top.setObjectName("reset_all")
        top.clicked.connect(self.resetAllRequested.emit)
        layout.addWidget(top)
        groups: dict[str, list] = {}
        for ch in schema.channels:
            groups.setdefault(ch.group, []).append(ch)
        for group, chans in groups.items():
            box = QGroupBox(group.capitalize())
            grid = QGridLayout(box)
            row = 0
            if any(partner(schema, c.name) for c in chans):
                link = QCheckBox("link left/right")
                link.setChecked(True)
                link.setObjectName(f"link_{group}")
                grid.addWidget(link, row, 0, 1, 4)
                self.links[group] = link
                row += 1
            for ch in chans:
                self.rows[ch.name] = ChannelRow(self, grid, row, ch)
                row += 1
            layout.addWidget(box)
        layout.addStretch(1)
        self.setWidget(body)

    def _edited(self, name: str, value: float, source: str) -> None:
        row = self.rows[name]
        row.show(value)
        self.valueEdited.emit(name, value)
        other = partner(self.schema, name)
        link = self.links.get(row.channel.group)
        if other and link is not None and link.isChecked():
            self.rows[other].show(value)
            self.valueEdited.emit(other, value)

    def show_values(self, values) -> None:
        for name, v in zip(self.schema.names, values, strict=True):
            self.rows[name].show(float(v))
