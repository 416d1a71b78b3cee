"""CPTNet's own schema, ``pose5`` (seed 000's pose vector), and its converter to and from the character rig."""

from __future__ import annotations

from ...rig import Channel, Converter, Schema, character_schema, get_schema, lost_channels

POSE5_DEG = 20.0  # pose5's head angles span ±1 = ±20°


def pose5() -> Schema:
    eye = "{} eye openness (1 = open, 0 = closed)"
    chans = [
        Channel("eye_left", "Eye L", "eyes", "L", 0, 1, 1, "", eye.format("Left")),
        Channel("eye_right", "Eye R", "eyes", "R", 0, 1, 1, "", eye.format("Right")),
        Channel("mouth", "Mouth", "mouth", None, 0, 1, 0, "", "Mouth openness (1 = open)"),
        Channel("head_pitch", "Head up/down", "head", None, -1, 1, 0, "×20°", "Top-down head rotation, ±1 = ±20°"),
        Channel("head_yaw", "Head left/right", "head", None, -1, 1, 0, "×20°", "Left-right head rotation, ±1 = ±20°"),
    ]
    return Schema("pose5", chans, "CPTNet pose vector (seed 000)")


def pose5_converter() -> Converter:
    def to(c):
        return {"eye_left": 1 - c["blink_left"], "eye_right": 1 - c["blink_right"], "mouth": c["mouth_open"],
                "head_pitch": c["head_pitch"] / POSE5_DEG, "head_yaw": c["head_yaw"] / POSE5_DEG}

    def back(p):
        return {"blink_left": 1 - p["eye_left"], "blink_right": 1 - p["eye_right"], "mouth_open": p["mouth"],
                "head_pitch": p["head_pitch"] * POSE5_DEG, "head_yaw": p["head_yaw"] * POSE5_DEG}

    kept = {"blink_left", "blink_right", "mouth_open", "head_pitch", "head_yaw"}
    lost = lost_channels(n for n in character_schema().names if n not in kept)
    lost["head_pitch"] = lost["head_yaw"] = "clipped to ±20° (pose5's ±1)"
    return Converter(get_schema("pose5"), to, back, lost_to=lost)
