"""Syntax check of generated Tcl without Vivado: tclsh runs each command in a child interpreter
where vendor commands (and file/exec/open, hidden there) are recorded instead of executed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHECKER = r"""
set path [lindex $argv 0]
set script_argv [lrange $argv 1 end]
set f [open $path]
set text [read $f]
close $f
set child [interp create]
foreach cmd {exec open file cd socket source load exit glob pwd puts} {
    $child hide $cmd
}
$child eval [list set argv $script_argv]
$child eval [list set argc [llength $script_argv]]
$child eval {
    set ::__calls {}
    proc unknown {args} { lappend ::__calls [lindex $args 0]; return 1 }
}
set cmd ""
set line_no 0
set start 1
foreach line [split $text \n] {
    incr line_no
    if {$cmd eq ""} { set start $line_no }
    append cmd $line \n
    if {[info complete $cmd]} {
        if {[catch {$child eval $cmd} msg]} {
            puts "ERROR at line $start: $msg"
            exit 2
        }
        set cmd ""
    }
}
if {[string trim $cmd] ne ""} {
    puts "INCOMPLETE command from line $start"
    exit 3
}
puts "CALLS [lsort -unique [$child eval {set ::__calls}]]"
"""


def tclsh_unavailable_reason() -> str | None:
    return None if shutil.which("tclsh") else "tclsh is not installed (apt-get install tcl)"


def check_tcl(path: Path, argv: list[str], tmp: Path) -> set[str]:
    """Run ``path`` through the checker; return the vendor commands it called.

    Raises:
        AssertionError: a command failed to parse or evaluate (message says where).
    """
    checker = tmp / "tcl_check.tcl"
    checker.write_text(CHECKER)
    proc = subprocess.run(["tclsh", str(checker), str(path), *argv], capture_output=True,
                          text=True, timeout=60)
    out = proc.stdout.strip()
    assert proc.returncode == 0 and out.startswith("CALLS"), f"{path.name}: {out}{proc.stderr}"
    return set(out.split()[1:])
