"""What Multi-User 0.6.9 needs of Blender 5.0 that 5.0 renamed.

0.6.9 was released for Blender 4.3 to 4.5. Its own code (not the
``replication`` library) uses two names Blender 5.0 renamed, and on 5.0
an artist's copy fails without them, whatever library it runs with:

- ``bpy.types.GreasePencilv3``, now ``GreasePencil``: the add-on's grease
  pencil support names it at import, so the add-on does not enable;
- ``Scene.grease_pencil`` (a scene's annotations), now ``Scene.annotation``:
  the add-on dumps it with every scene, and reads it from a timer whose
  failure ends the session as soon as it is active.

The tests give them back under their old names, as a release of the
add-on for 5.0 would read the new ones, so that its session runs against
this project's library in 5.0 too. Nothing happens where a name exists.
"""

import bpy


def restore():
    if not hasattr(bpy.types, "GreasePencilv3"):
        bpy.types.GreasePencilv3 = bpy.types.GreasePencil
    scene = bpy.types.Scene
    if "grease_pencil" not in scene.bl_rna.properties and "annotation" in scene.bl_rna.properties:
        scene.grease_pencil = property(
            lambda self: self.annotation, lambda self, value: setattr(self, "annotation", value)
        )
