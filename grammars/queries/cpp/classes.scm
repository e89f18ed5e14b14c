; Classes, structs, unions and enums with a body.
(class_specifier
  name: (_)? @class.name
  body: (field_declaration_list) @class.body) @class
(struct_specifier
  name: (_)? @class.name
  body: (field_declaration_list) @class.body) @class
(union_specifier
  name: (_)? @class.name
  body: (field_declaration_list) @class.body) @class
(enum_specifier
  name: (_)? @class.name
  body: (enumerator_list) @class.body) @class
