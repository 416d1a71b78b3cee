"""Timeline widgets: a dope sheet (one row of keys per channel) and a curve view with editable Bézier handles.

Dope sheet: click the ruler (or drag on it) to scrub; click a key to select it (Shift adds), drag to move the selected
keys in time; double-click a row to insert a key there; Delete removes the selected keys; Ctrl+C / Ctrl+V copy and
paste them at the current frame; right-click sets their interpolation. Clicking a channel name shows it in the curve
view, where keys can be dragged in value and Bézier handles (for ``bezier`` keys) in time and value.
"""

from __future__ import annotations

import numpy as np
from PyQt5.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt5.QtGui import QColor, QKeySequence, QPainter, QPainterPath, QPen, QPolygonF
from PyQt5.QtWidgets import QMenu, QWidget

from keyface.core.errors import KeyfaceError
from keyface.core.timeline import INTERPOLATIONS

LABEL_W, RULER_H, ROW_H = 120, 22, 18


class DopeSheet(QWidget):
    channelActivated = pyqtSignal(str)
    error = pyqtSignal(str)

    def __init__(self, doc, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.selected: set[tuple[str, int]] = set()
        self.clipboard: list = []
        self._drag = None  # (start frame, keys) while moving keys
        self._scrubbing = False
        self.setFocusPolicy(Qt.StrongFocus)
        self.setMinimumHeight(RULER_H + ROW_H * 4)
        doc.changed.connect(self._doc_changed)
        doc.frameChanged.connect(lambda _: self.update())

    def _doc_changed(self):
        self.selected = {k for k in self.selected if self.doc.timeline.track(k[0]).key_at(k[1]) is not None}
        self.setMinimumHeight(RULER_H + ROW_H * len(self.doc.schema.names) + 4)
        self.update()

    # geometry ------------------------------------------------------------------------------------------------------
    def _scale(self) -> float:
        first, last = self.doc.frame_range
        return max(4.0, (self.width() - LABEL_W - 10) / max(1, last - first + 1))

    def x_of(self, frame: float) -> float:
        return LABEL_W + (frame - self.doc.frame_range[0] + 0.5) * self._scale()

    def frame_at(self, x: float) -> int:
        f = int(np.floor((x - LABEL_W) / self._scale())) + self.doc.frame_range[0]
        return int(min(max(f, self.doc.frame_range[0]), self.doc.frame_range[1]))

    def row_at(self, y: float) -> str | None:
        i = int((y - RULER_H) // ROW_H)
        names = self.doc.schema.names
        return names[i] if 0 <= i < len(names) and y >= RULER_H else None

    def y_of(self, channel: str) -> float:
        return RULER_H + self.doc.schema.index(channel) * ROW_H + ROW_H / 2

    def key_at(self, pos) -> tuple[str, int] | None:
        channel = self.row_at(pos.y())
        if channel is None:
            return None
        for k in self.doc.keys(channel):
            if abs(self.x_of(k.frame) - pos.x()) <= 6:
                return channel, k.frame
        return None

    # painting ------------------------------------------------------------------------------------------------------
    def paintEvent(self, _):
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.fillRect(self.rect(), QColor(40, 40, 44))
        first, last = self.doc.frame_range
        step = max(1, int(40 / self._scale()))
        p.setPen(QColor(150, 150, 160))
        for f in range(first, last + 1):
            x = self.x_of(f)
            if (f - first) % step == 0:
                p.drawText(QRectF(x - 20, 2, 40, RULER_H - 4), Qt.AlignCenter, str(f))
        for i, name in enumerate(self.doc.schema.names):
            y = RULER_H + i * ROW_H
            if i % 2:
                p.fillRect(QRectF(0, y, self.width(), ROW_H), QColor(46, 46, 52))
            p.setPen(QColor(210, 210, 215))
            p.drawText(QRectF(4, y, LABEL_W - 8, ROW_H), Qt.AlignVCenter | Qt.AlignLeft, name)
            for k in self.doc.keys(name):
                sel = (name, k.frame) in self.selected
                self._diamond(p, self.x_of(k.frame), y + ROW_H / 2, sel, k.interpolation)
        x = self.x_of(self.doc.frame)
        p.setPen(QPen(QColor(90, 160, 255), 2))
        p.drawLine(QPointF(x, 0), QPointF(x, self.height()))

    @staticmethod
    def _diamond(p, x, y, selected, interpolation):
        r = 5
        poly = QPolygonF([QPointF(x, y - r), QPointF(x + r, y), QPointF(x, y + r), QPointF(x - r, y)])
        p.setPen(QPen(QColor(20, 20, 20), 1))
        color = QColor(255, 200, 60) if selected else QColor(220, 220, 220)
        if interpolation == "constant":
            color = color.darker(130)
        p.setBrush(color)
        p.drawPolygon(poly)

    # interaction ---------------------------------------------------------------------------------------------------
    def mousePressEvent(self, e):
        pos = e.pos()
        if pos.y() < RULER_H:
            self._scrubbing = True
            self.doc.set_frame(self.frame_at(pos.x()))
            return
        if pos.x() < LABEL_W:
            channel = self.row_at(pos.y())
            if channel:
                self.channelActivated.emit(channel)
            return
        key = self.key_at(pos)
        if e.button() == Qt.RightButton:
            if key and key not in self.selected:
                self.selected = {key}
            self._interpolation_menu(e.globalPos())
            return
        if key is None:
            if not e.modifiers() & Qt.ShiftModifier:
                self.selected.clear()
            self.doc.set_frame(self.frame_at(pos.x()))
        else:
            if e.modifiers() & Qt.ShiftModifier:
                self.selected ^= {key}
            elif key not in self.selected:
                self.selected = {key}
            self._drag = (self.frame_at(pos.x()), sorted(self.selected))
        self.update()

    def mouseMoveEvent(self, e):
        if self._scrubbing:
            self.doc.set_frame(self.frame_at(e.pos().x()))

    def mouseReleaseEvent(self, e):
        self._scrubbing = False
        if self._drag:
            start, keys = self._drag
            self._drag = None
            delta = self.frame_at(e.pos().x()) - start
            if delta:
                try:
                    self.selected = set(self.doc.move_keys(keys, delta))
                except KeyfaceError as exc:
                    self.error.emit(str(exc))
            self.update()

    def mouseDoubleClickEvent(self, e):
        channel = self.row_at(e.pos().y())
        if channel and e.pos().x() >= LABEL_W:
            frame = self.frame_at(e.pos().x())
            self.doc.insert_key(channel, frame)
            self.selected = {(channel, frame)}

    def keyPressEvent(self, e):
        if e.key() in (Qt.Key_Delete, Qt.Key_Backspace) and self.selected:
            self.doc.delete_keys(sorted(self.selected))
            self.selected.clear()
        elif e.matches(QKeySequence.Copy):
            self.clipboard = self.doc.copy_keys(sorted(self.selected))
        elif e.matches(QKeySequence.Paste) and self.clipboard:
            self.doc.paste_keys(self.clipboard, self.doc.frame)
        else:
            super().keyPressEvent(e)

    def _interpolation_menu(self, where):
        if not self.selected:
            return
        menu = QMenu(self)
        for name in INTERPOLATIONS:
            menu.addAction(name.replace("_", " "), lambda n=name: self.doc.set_interpolation(sorted(self.selected), n))
        menu.exec_(where)


class CurveView(QWidget):
    """One channel's curve over the frame range: drag keys (value) and Bézier handles."""

    error = pyqtSignal(str)
    MARGIN = 24

    def __init__(self, doc, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.channel: str | None = None
        self._drag = None  # ("key", frame) or ("left"/"right", frame)
        self.setMinimumHeight(120)
        doc.changed.connect(self.update)
        doc.frameChanged.connect(lambda _: self.update())

    def set_channel(self, channel: str) -> None:
        self.channel = channel
        self.update()

    def _map(self):
        ch = self.doc.schema.channel(self.channel)
        first, last = self.doc.frame_range
        m = self.MARGIN
        sx = (self.width() - 2 * m) / max(1, last - first)
        sy = (self.height() - 2 * m) / max(1e-9, ch.max - ch.min)

        def to_px(f, v):
            return QPointF(m + (f - first) * sx, self.height() - m - (v - ch.min) * sy)

        def from_px(x, y):
            return first + (x - m) / sx, ch.min + (self.height() - m - y) / sy

        return to_px, from_px

    def _handle_points(self, k):
        """Where a key's handles are drawn: the user's, else the auto-clamped ones the sampler uses."""
        track = self.doc.timeline.track(self.channel)
        keys = track.keys
        i = keys.index(k)
        out = {}
        for side, nb in (("left", i - 1), ("right", i + 1)):
            h = k.handle_left if side == "left" else k.handle_right
            if h is None and 0 <= nb < len(keys):
                gap = (keys[nb].frame - k.frame) / 3
                v = float(track.sample([k.frame + gap])[0])
                h = (gap, v - k.value)
            if h is not None:
                out[side] = h
        return out

    def paintEvent(self, _):
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.fillRect(self.rect(), QColor(36, 36, 40))
        if self.channel is None:
            p.setPen(QColor(160, 160, 160))
            p.drawText(self.rect(), Qt.AlignCenter, "click a channel name in the dope sheet")
            return
        to_px, _ = self._map()
        first, last = self.doc.frame_range
        frames = np.linspace(first, last, max(2, self.width()))
        values = self.doc.timeline.sample(frames)[:, self.doc.schema.index(self.channel)]
        path = QPainterPath(to_px(frames[0], values[0]))
        for f, v in zip(frames[1:], values[1:], strict=True):
            path.lineTo(to_px(f, v))
        p.setPen(QPen(QColor(120, 200, 255), 2))
        p.drawPath(path)
        for k in self.doc.keys(self.channel):
            c = to_px(k.frame, k.value)
            if k.interpolation == "bezier":
                for h in self._handle_points(k).values():
                    hp = to_px(k.frame + h[0], k.value + h[1])
                    p.setPen(QPen(QColor(200, 200, 120), 1))
                    p.drawLine(c, hp)
                    p.setBrush(QColor(200, 200, 120))
                    p.drawEllipse(hp, 3, 3)
            p.setBrush(QColor(240, 240, 240))
            p.drawEllipse(c, 4, 4)
        p.setPen(QPen(QColor(90, 160, 255), 1))
        x = to_px(self.doc.frame, 0).x()
        p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
        p.setPen(QColor(170, 170, 170))
        p.drawText(QRectF(4, 2, 300, 16), Qt.AlignLeft, self.channel)

    def _hit(self, pos):
        to_px, _ = self._map()
        for k in self.doc.keys(self.channel):
            if k.interpolation == "bezier":
                for side, h in self._handle_points(k).items():
                    if (to_px(k.frame + h[0], k.value + h[1]) - pos).manhattanLength() <= 7:
                        return side, k.frame
            if (to_px(k.frame, k.value) - pos).manhattanLength() <= 7:
                return "key", k.frame
        return None

    def mousePressEvent(self, e):
        if self.channel:
            self._drag = self._hit(QPointF(e.pos()))

    def mouseMoveEvent(self, e):
        if not self._drag:
            return
        _, from_px = self._map()
        f, v = from_px(e.pos().x(), e.pos().y())
        what, frame = self._drag
        k = self.doc.timeline.track(self.channel).key_at(frame)
        ch = self.doc.schema.channel(self.channel)
        try:
            if what == "key":
                self.doc.set_value_at(self.channel, frame, float(np.clip(v, ch.min, ch.max)))
            else:
                dx = f - frame
                dx = min(dx, -1e-3) if what == "left" else max(dx, 1e-3)
                handle = (dx, v - k.value)
                self.doc.set_handles(self.channel, frame, **{what: handle})
        except KeyfaceError as exc:
            self.error.emit(str(exc))

    def mouseReleaseEvent(self, _):
        self._drag = None
