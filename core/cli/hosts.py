"""Host plugins: put keyface into the painting and animation programs artists already use."""

from __future__ import annotations


def cmd_krita(args, out) -> int:
    from keyface.addon.krita import install

    action = install.install if args.krita_command == "install" else install.uninstall
    for line in action(args.pykrita, args.kritarc):
        out.write(line + "\n")
    return 0


def add(cmds) -> None:
    k = cmds.top.add_parser("krita", help="install or remove the Krita plugin (a keyface docker)")
    ksub = k.add_subparsers(dest="krita_command", required=True, metavar="ACTION")
    for name, text in (("install", "put the plugin in Krita's pykrita folder and enable it (run with Krita closed)"),
                       ("uninstall", "remove the plugin and its kritarc entry")):
        kp = ksub.add_parser(name, help=text)
        kp.add_argument("--pykrita", metavar="DIR", help="Krita's pykrita folder (default: this platform's)")
        kp.add_argument("--kritarc", metavar="FILE", help="Krita's settings file (default: this platform's)")
        kp.set_defaults(run=cmd_krita)
