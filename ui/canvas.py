"""The canvas: the source image with zoom (wheel) and pan (drag with the middle button, or Space + drag), the face box
drawn and editable with the mouse (drag inside to move, drag a corner to resize, square), and the generator's preview
shown in the box; for a model that fits a face (F³A's 3DMM) the fitted landmarks are drawn over the face, so an
artist sees a bad fit (and corrects the face box) before rendering."""

from __future__ import annotations

import numpy as np
from PyQt5.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt5.QtGui import QColor, QImage, QPainter, QPainterPath, QPen, QPixmap
from PyQt5.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsView,
)

from keyface.core.pixels import convert_depth


def to_qimage(img: np.ndarray) -> QImage:
    """RGB(A) array of any depth → QImage (8-bit, copied)."""
    if img.dtype != np.uint8:
        img = convert_depth(img, np.uint8)
    img = np.ascontiguousarray(img)
    h, w, c = img.shape
    fmt = QImage.Format_RGBA8888 if c == 4 else QImage.Format_RGB888
    return QImage(img.data, w, h, w * c, fmt).copy()


class BoxItem(QGraphicsRectItem):
    """The face box: movable, resizable from its corners, kept square and inside the image."""

    HANDLE = 10

    def __init__(self, view):
        super().__init__()
        self.view = view
        self.setPen(QPen(QColor(80, 200, 255), 0))
        self.setFlag(QGraphicsItem.ItemIsSelectable, False)
        self.setAcceptHoverEvents(True)
        self._mode = None
        self._press = None

    def mousePressEvent(self, e):
        r = self.rect()
        p = e.pos()
        tol = self.HANDLE / max(self.view.transform().m11(), 1e-6)
        corners = {"tl": r.topLeft(), "tr": r.topRight(), "bl": r.bottomLeft(), "br": r.bottomRight()}
        self._mode = next((n for n, c in corners.items() if (c - p).manhattanLength() <= tol), "move")
        self._press = (p, QRectF(r))

    def mouseMoveEvent(self, e):
        start, r0 = self._press
        d = e.pos() - start
        r = QRectF(r0)
        if self._mode == "move":
            r.translate(d)
        else:
            # square resize keeping the opposite corner fixed
            corners = {"tl": r0.topLeft(), "tr": r0.topRight(), "bl": r0.bottomLeft(), "br": r0.bottomRight()}
            opposite = {"tl": "br", "tr": "bl", "bl": "tr", "br": "tl"}
            anchor = corners[opposite[self._mode]]
            moving = corners[self._mode] + d
            side = max(16.0, max(abs(moving.x() - anchor.x()), abs(moving.y() - anchor.y())))
            sx = 1 if moving.x() >= anchor.x() else -1
            sy = 1 if moving.y() >= anchor.y() else -1
            r = QRectF(anchor, anchor + QPointF(sx * side, sy * side)).normalized()
        self.setRect(self.view.clamp_box(r))

    def mouseReleaseEvent(self, e):
        self._mode = None
        self.view.box_edited()


class Canvas(QGraphicsView):
    boxEdited = pyqtSignal(tuple)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.Antialiasing | QPainter.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.setBackgroundBrush(QColor(60, 60, 64))
        self.image_item = QGraphicsPixmapItem()
        self.preview_item = QGraphicsPixmapItem()
        self.preview_item.setTransformationMode(Qt.SmoothTransformation)
        self.box_item = BoxItem(self)
        self.landmark_item = QGraphicsPathItem()
        pen = QPen(QColor(255, 60, 60))
        pen.setCosmetic(True)  # one screen pixel at any zoom
        self.landmark_item.setPen(pen)
        for item in (self.image_item, self.preview_item, self.landmark_item, self.box_item):
            self.scene().addItem(item)
        self.box_item.setVisible(False)
        self._size = (0, 0)
        self._pan = None

    def set_image(self, img: np.ndarray) -> None:
        self.image_item.setPixmap(QPixmap.fromImage(to_qimage(img)))
        self._size = (img.shape[1], img.shape[0])
        self.scene().setSceneRect(QRectF(0, 0, *self._size))
        self.preview_item.setPixmap(QPixmap())
        self.fit()

    def fit(self) -> None:
        self.fitInView(self.scene().sceneRect(), Qt.KeepAspectRatio)

    def set_box(self, box) -> None:
        if box is None:
            self.box_item.setVisible(False)
            return
        x, y, w, h = box
        self.box_item.setRect(QRectF(x, y, w, h))
        self.box_item.setVisible(True)

    def clamp_box(self, r: QRectF) -> QRectF:
        w, h = self._size
        side = min(r.width(), w, h)
        x = min(max(r.x(), 0), w - side)
        y = min(max(r.y(), 0), h - side)
        return QRectF(round(x), round(y), round(side), round(side))

    def box_edited(self) -> None:
        r = self.box_item.rect()
        self.boxEdited.emit((int(r.x()), int(r.y()), int(r.width()), int(r.height())))

    def show_preview(self, img: np.ndarray | None, box) -> None:
        """The generator's low-res result, drawn scaled into its working region (``box``)."""
        if img is None or box is None:
            self.preview_item.setPixmap(QPixmap())
            return
        pix = QPixmap.fromImage(to_qimage(img))
        self.preview_item.setPixmap(pix)
        x, y, w, h = box
        self.preview_item.setPos(x, y)
        self.preview_item.setScale(w / pix.width())

    def show_landmarks(self, pts) -> None:
        """Small crosses at (N, 2) document-pixel landmarks (``None``: hide them)."""
        path = QPainterPath()
        if pts is not None:
            r = max(1.5, min(self._size) / 300)
            for x, y in np.asarray(pts, np.float64):
                path.moveTo(x - r, y)
                path.lineTo(x + r, y)
                path.moveTo(x, y - r)
                path.lineTo(x, y + r)
        self.landmark_item.setPath(path)
        self.landmark_item.setVisible(pts is not None)

    def wheelEvent(self, e):
        factor = 1.25 if e.angleDelta().y() > 0 else 0.8
        self.scale(factor, factor)

    def mousePressEvent(self, e):
        if e.button() == Qt.MiddleButton:
            self._pan = e.pos()
            return
        super().mousePressEvent(e)

    def mouseMoveEvent(self, e):
        if self._pan is not None:
            d = e.pos() - self._pan
            self._pan = e.pos()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - d.x())
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - d.y())
            return
        super().mouseMoveEvent(e)

    def mouseReleaseEvent(self, e):
        if e.button() == Qt.MiddleButton:
            self._pan = None
            return
        super().mouseReleaseEvent(e)
