"""keyface.ui — desktop front ends (PyQt5). Runs without any host application."""
