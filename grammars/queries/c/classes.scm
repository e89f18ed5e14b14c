; Structs, unions and enums with a body.
(struct_specifier
  name: (type_identifier)? @class.name
  body: (field_declaration_list) @class.body) @class
(union_specifier
  name: (type_identifier)? @class.name
  body: (field_declaration_list) @class.body) @class
(enum_specifier
  name: (type_identifier)? @class.name
  body: (enumerator_list) @class.body) @class
